"""Property tests (hypothesis) of attention() itself, over random shapes and implementations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks

shapes = st.tuples(st.integers(1, 2), st.sampled_from([(1, 1), (2, 1), (4, 2)]), st.integers(1, 9),
                   st.integers(1, 9), st.sampled_from([4, 8]))


def _qkv(shape, seed):
    b, (h, hkv), t, s, d = shape
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g, dtype=torch.float64),
            torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64),
            torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), weight=st.sampled_from(["softmax", "sparsemax", "entmax15"]))
def test_weights_are_distributions_and_masked_keys_get_zero(shape, seed, weight):
    q, k, v = _qkv(shape, seed)
    mask = masks.random(0.6, seed=seed) | masks.causal()
    _, w = attnkit.attention(q, k, v, mask, weight=weight, return_weights=True)
    allowed = mask.dense(q.shape[2], k.shape[2])
    assert (w >= 0).all()
    assert (w[..., ~allowed] == 0).all()
    sums = w.sum(-1)
    alive = allowed.any(-1)
    torch.testing.assert_close(sums[..., alive], torch.ones_like(sums[..., alive]))
    assert (sums[..., ~alive] == 0).all()


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), impl=st.sampled_from(["auto", "reference", "sdpa"]))
def test_permuting_keys_and_values_together_leaves_output_unchanged(shape, seed, impl):
    q, k, v = _qkv(shape, seed)
    perm = torch.randperm(k.shape[2], generator=torch.Generator().manual_seed(seed))
    a = attnkit.attention(q, k, v, impl=impl)
    b = attnkit.attention(q, k[:, :, perm], v[:, :, perm], impl=impl)
    torch.testing.assert_close(a, b)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), impl=st.sampled_from(["auto", "reference", "sdpa"]))
def test_causal_outputs_ignore_future_tokens(shape, seed, impl):
    b, (h, hkv), t, _, d = shape
    q, k, v = _qkv((b, (h, hkv), t, t, d), seed)
    cut = t // 2
    k2, v2 = k.clone(), v.clone()
    k2[:, :, cut + 1 :] += 5.0  # change every token after position `cut`
    v2[:, :, cut + 1 :] -= 3.0
    a = attnkit.attention(q, k, v, masks.causal(), impl=impl)
    c = attnkit.attention(q, k2, v2, masks.causal(), impl=impl)
    torch.testing.assert_close(a[:, :, : cut + 1], c[:, :, : cut + 1])
    if t > cut + 1:
        assert not torch.allclose(a[:, :, cut + 1 :], c[:, :, cut + 1 :])


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_gqa_equals_repeated_heads(impl):
    q, k, v = _qkv((2, (4, 2), 5, 7, 8), 0)
    rep = lambda x: x.repeat_interleave(2, dim=1)  # noqa: E731
    torch.testing.assert_close(attnkit.attention(q, k, v, impl=impl), attnkit.attention(q, rep(k), rep(v), impl=impl))
