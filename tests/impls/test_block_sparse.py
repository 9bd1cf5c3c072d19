"""``impl="block_sparse"`` against ``impl="reference"`` with the same mask, forward and backward.

Tolerances: float64 1e-10 (atol and rtol) on outputs and gradients; float32 2e-5 on outputs and
1e-4 on gradients (against the float64 reference); bfloat16 by the ratio rule of the conformance
tests (err <= 2 * err(reference in bfloat16) + 1e-2). Small block sizes make every case cross
several tiles, partial tiles and (with a small ``chunk``) several chunks.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks, scores
from attnkit.errors import AttnKitError, UnsupportedError
from attnkit.impls import block_sparse as bsmod
from attnkit.masks import patterns


def _inputs(b, h, hkv, t, s, d, dv, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v)]


def _run(impl, q, k, v, mask, **kw):
    """Output and the gradients of sum(out * cotangent) for q, k, v."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = attnkit.attention(q, k, v, mask, impl=impl, **kw)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    (out * cot).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _assert_matches(q, k, v, mask, options, atol=1e-10, **kw):
    got = _run("block_sparse", q, k, v, mask, options={**options}, **kw)
    ref = _run("reference", q, k, v, mask, **kw)
    for name, a, r in zip(("out", "dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a, r, atol=atol, rtol=atol, msg=lambda m, n=name: f"{n}: {m}")
        assert torch.isfinite(a).all()
    return got


def _patterns():
    return {
        "sliding_window": patterns.sliding_window(6),
        "causal_window": patterns.sliding_window(9, causal=True),
        "dilated_window": patterns.dilated_window(3, 2),
        "strided": patterns.strided(5),
        "strided_bidirectional": patterns.strided(4, causal=False),
        "fixed": patterns.fixed(8, 2),
        "fixed_bidirectional": patterns.fixed(6, 1, causal=False),
        "longformer": patterns.longformer(4, [0, 13]),
        "random_blocks": patterns.random_blocks(2, 8, seed=1),
        "bigbird": patterns.bigbird(8, random_blocks=2),
        "bigbird_causal": patterns.bigbird(8) & masks.causal(),
        "layout": patterns.from_layout(torch.tensor([[1, 0, 0, 1, 0, 0, 0, 1]] * 7, dtype=torch.bool), 8),
    }


# shapes: B, H, Hkv, T, S, D, Dv; T and S not multiples of the blocks; GQA in the second
SHAPES = {"square": (2, 2, 2, 53, 53, 8, 8), "gqa": (1, 4, 2, 45, 45, 8, 6)}


@pytest.mark.parametrize("name", list(_patterns()))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_pattern_matches_reference(name, shape):
    mask = _patterns()[name]
    q, k, v = _inputs(*SHAPES[shape])
    _assert_matches(q, k, v, mask, {"block": 8})


@pytest.mark.parametrize("bq,bk,chunk", [(16, 8, 1 << 22), (8, 16, 300), (5, 7, 1000), (64, 64, 1 << 22)])
def test_block_sizes_and_chunks(bq, bk, chunk):
    q, k, v = _inputs(1, 4, 2, 61, 61, 8, 8)
    mask = patterns.longformer(5, [3]) & masks.causal()
    _assert_matches(q, k, v, mask, {"block_q": bq, "block_k": bk, "chunk": chunk})


@pytest.mark.parametrize("t,s", [(20, 47), (47, 20)])
def test_queries_and_keys_of_different_lengths(t, s):
    q, k, v = _inputs(2, 2, 1, t, s, 8, 8)
    for mask in (patterns.sliding_window(5, causal=True), masks.causal(), patterns.strided(4)):
        _assert_matches(q, k, v, mask, {"block": 8})


def test_rows_split_over_several_segments_merge_exactly():
    """Global rows of BigBird keep every tile: they are split into several segments and merged
    with the log-sum-exp rule."""
    mask = patterns.bigbird(4, random_blocks=1)
    plan = bsmod.plan_for(mask, 96, 96, 4, 4)[0][0]
    assert not plan.single and len(plan.seg_q) > plan.n_q
    q, k, v = _inputs(1, 2, 2, 96, 96, 8, 8)
    _assert_matches(q, k, v, mask, {"block": 4, "chunk": 2000})


def test_band_views_and_gathers_agree():
    """A causal window uses strided views for its interior rows; a tiny chunk forces chunks that
    mix band and gathered segments to be separate."""
    plan = bsmod.plan_for(patterns.sliding_window(16, causal=True), 128, 128, 8, 8)[0][0]
    assert bool(plan.band.any()) and not bool(plan.band.all())
    q, k, v = _inputs(1, 2, 1, 128, 128, 8, 8)
    for chunk in (64, 1 << 22):
        _assert_matches(q, k, v, patterns.sliding_window(16, causal=True), {"block": 8, "chunk": chunk})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(1, 40), s=st.integers(1, 40), block=st.integers(2, 9),
       density=st.floats(0.0, 0.7), hkv=st.sampled_from([1, 2]))
def test_random_layouts_with_empty_rows(seed, t, s, block, density, hkv):
    """Random layouts, including query-block rows with no kept tile: zeros, no NaN, exact grads."""
    g = torch.Generator().manual_seed(seed)
    nq, nk = math.ceil(t / block), math.ceil(s / block)
    layout = torch.rand(nq, nk, generator=g) < density
    if nq > 1:
        layout[0] = False  # at least one empty row
    mask = patterns.from_layout(layout, block)
    q, k, v = _inputs(1, 2, hkv, t, s, 4, 3, seed=seed)
    out, dq, _, _ = _assert_matches(q, k, v, mask, {"block": block})
    dead = ~mask.dense(t, s).any(-1)  # (T,)
    assert (out[:, :, dead] == 0).all() and (dq[:, :, dead] == 0).all()


def test_fully_masked_batch_and_per_head_layouts():
    lengths = torch.tensor([0, 30, 11])
    q, k, v = _inputs(3, 4, 2, 30, 30, 8, 8)
    mask = patterns.sliding_window(4) & masks.padding(lengths)
    out, dq, _, _ = _assert_matches(q, k, v, mask, {"block": 8})
    assert (out[0] == 0).all() and (dq[0] == 0).all()
    per_head = masks.block_sparse(torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(2)) < 0.5, 8)
    _assert_matches(q, k, v, per_head, {"block": 8})


@pytest.mark.parametrize("mod", ["bias", "alibi", "softcap"])
def test_score_modifiers(mod):
    q, k, v = _inputs(2, 4, 2, 37, 37, 8, 8)
    mods = {"bias": (scores.bias(torch.randn(4, 37, 37, dtype=torch.float64)),),
            "alibi": (scores.alibi(4),), "softcap": (scores.softcap(1.5),)}[mod]
    _assert_matches(q, k, v, patterns.sliding_window(6, causal=True), {"block": 8}, score_mods=mods)


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_other_scores(score):
    q, k, v = _inputs(1, 2, 2, 33, 33, 8, 8)
    _assert_matches(q, k, v, patterns.strided(4), {"block": 8}, score=score)


def test_float32_and_bfloat16():
    mask = patterns.bigbird(8) & masks.causal()
    q, k, v = _inputs(1, 4, 2, 70, 70, 16, 16, dtype=torch.float32)
    got = _run("block_sparse", q, k, v, mask, options={"block": 16})
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask)
    for name, a, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), r, atol=2e-5 if name == "out" else 1e-4, rtol=1e-5)
    qb, kb, vb = (x.to(torch.bfloat16) for x in (q, k, v))
    got = _run("block_sparse", qb, kb, vb, mask, options={"block": 16})
    low = _run("reference", qb, kb, vb, mask)
    for a, lo, r in zip(got, low, ref):
        assert a.dtype == torch.bfloat16
        assert (a.double() - r).abs().max() <= 2 * (lo.double() - r).abs().max() + 1e-2


def test_returned_weights_dense_and_blocks():
    q, k, v = _inputs(2, 4, 2, 29, 35, 8, 8)
    mask = patterns.sliding_window(5, causal=True) & masks.padding([0, 30])
    ref_out, ref_w = attnkit.attention(q, k, v, mask, impl="reference", return_weights=True)
    out, w = attnkit.attention(q, k, v, mask, impl="block_sparse", return_weights=True,
                               options={"block": 8})
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-10, rtol=1e-10)
    _, bw = attnkit.attention(q, k, v, mask, impl="block_sparse", return_weights=True,
                              options={"block": 8, "weights_format": "blocks"})
    assert isinstance(bw, bsmod.BlockWeights)
    assert bw.values.shape[1:] == (8, 8) and bw.tiles.shape == (len(bw.values), 4)
    assert (bw.tiles[:, 0] == 1).all()  # batch 0 has no keys: no tiles at all
    torch.testing.assert_close(bw.to_dense(), ref_w, atol=1e-10, rtol=1e-10)


def test_observe_hook_gets_weights():
    q, k, v = _inputs(1, 2, 2, 20, 20, 8, 8)
    seen = []
    mask = patterns.sliding_window(3)
    with attnkit.observe(lambda call, name, out, w: seen.append((name, w))):
        attnkit.attention(q, k, v, mask, impl="block_sparse", options={"block": 8})
    assert seen[0][0] == "block_sparse"
    torch.testing.assert_close(seen[0][1], attnkit.attention(q, k, v, mask, impl="reference",
                                                             return_weights=True)[1])


def test_work_is_proportional_to_kept_tiles():
    """The plan holds only non-empty tiles: a causal window at T = 64k keeps ~ (w / b + 1) tiles
    per query block, and the padded slots are few."""
    t, w, b = 65536, 512, 64
    plan = bsmod.plan_for(patterns.sliding_window(w, causal=True), t, t, b, b)[0][0]
    n = t // b
    assert plan.tiles <= n * (w // b + 2)
    assert plan.seg_k.numel() <= 1.05 * plan.tiles
    assert plan.blocked.shape[0] <= 2 * n + 3  # sub-masks only for the partial tiles


# ---------------------------------------------------------------------------------------------
# dispatch and errors
# ---------------------------------------------------------------------------------------------


# the pure-PyTorch implementations (the native kernel, where built, ranks above them)
TORCH_IMPLS = ["block_sparse", "blockwise", "sdpa", "reference"]


@attnkit.use_impl(TORCH_IMPLS)
def test_auto_picks_block_sparse_for_sparse_masks_only():
    q = torch.randn(1, 1, 4096, 8)
    window = patterns.sliding_window(128, causal=True)
    assert attnkit.explain_dispatch(q, q, q, window).chosen == "block_sparse"
    report = attnkit.explain_dispatch(q, q, q, masks.causal())
    assert report.chosen != "block_sparse"
    assert "block density" in "; ".join(report.reasons["block_sparse"])
    small = torch.randn(1, 1, 256, 8)
    assert "dense sdpa is faster" in "; ".join(attnkit.explain_dispatch(small, small, small, window)
                                               .reasons["block_sparse"])
    assert attnkit.explain_dispatch(q, q, q, None).reasons["block_sparse"]


@attnkit.use_impl(TORCH_IMPLS)
def test_auto_result_matches_reference_at_length_where_it_is_chosen():
    q, k, v = _inputs(1, 2, 1, 2048, 2048, 8, 8)
    mask = patterns.sliding_window(64, causal=True)
    assert attnkit.explain_dispatch(q, k, v, mask).chosen == "block_sparse"
    torch.testing.assert_close(attnkit.attention(q, k, v, mask), attnkit.attention(q, k, v, mask, impl="reference"),
                               atol=1e-10, rtol=1e-10)


def test_errors_name_the_argument():
    q, k, v = _inputs(1, 1, 1, 16, 16, 4, 4)
    mask = patterns.sliding_window(2)
    with pytest.raises(AttnKitError, match="block_q"):
        attnkit.attention(q, k, v, mask, impl="block_sparse", options={"block_q": 0})
    with pytest.raises(AttnKitError, match="weights_format"):
        attnkit.attention(q, k, v, mask, impl="block_sparse", return_weights=True,
                          options={"weights_format": "csr"})
    with pytest.raises(UnsupportedError, match="dropout"):
        attnkit.attention(q, k, v, mask, impl="block_sparse", dropout_p=0.1)
    with pytest.raises(UnsupportedError, match="weight"):
        attnkit.attention(q, k, v, mask, impl="block_sparse", weight="sparsemax")


def test_learnable_bias_is_declined_not_silently_wrong():
    q, k, v = (x.requires_grad_() for x in _inputs(1, 1, 1, 16, 16, 4, 4))
    bias = torch.zeros(16, 16, dtype=torch.float64, requires_grad=True)
    with pytest.raises(UnsupportedError, match="requires grad"):
        attnkit.attention(q, k, v, patterns.sliding_window(2), impl="block_sparse", bias=bias)


@pytest.mark.parametrize("mask", [patterns.sliding_window(20, causal=True), patterns.bigbird(8),
                                  masks.causal() & masks.padding([0, 60, 100])],
                         ids=["window", "bigbird", "dead_rows"])
def test_inference_path_matches_reference(mask):
    """Without gradients one-segment rows take a fused softmax; dead rows keep the safe path."""
    q, k, v = _inputs(3, 4, 2, 100, 100, 16, 16)
    with torch.no_grad():
        got = attnkit.attention(q, k, v, mask, impl="block_sparse", options={"block": 16})
    ref = attnkit.attention(q, k, v, mask, impl="reference")
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    assert torch.isfinite(got).all()
