"""Attention dropout in LSH attention: seeded, unbiased, exactly the reference's rule when every
key is in one chunk, differentiable, and the kernels are never given a dropout call."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.errors import AttnKitError
from attnkit.impls.lsh.core import lsh_attention
from attnkit.impls.lsh.settings import LSHSettings
from attnkit.nn import MultiHeadAttention


def _qkv(b=1, h=2, t=48, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g, dtype=dtype) for _ in range(3))


def test_dropout_is_seeded_and_changes_the_output():
    q, k, v = _qkv()
    opts = {"bucket_size": 8, "n_hashes": 2}
    run = lambda seed, p: attnkit.attention(q, k, v, impl="lsh", options=opts, dropout_p=p,  # noqa: E731
                                            generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3, 0.3), run(3, 0.3))
    assert not torch.equal(run(3, 0.3), run(4, 0.3))
    assert not torch.equal(run(3, 0.3), run(3, 0.0))


def test_dropout_is_unbiased():
    q, k, v = _qkv(t=32)
    st = LSHSettings(bucket_size=8, n_hashes=2, seed=1)  # no generator: the rotations come from the seed
    clean = lsh_attention(q, k, v, settings=st).out
    torch.manual_seed(0)  # the dropout masks come from the global generator
    n = 400
    mean = sum(lsh_attention(q, k, v, settings=st, dropout_p=0.4).out for _ in range(n)) / n
    assert (mean - clean).abs().max() < 0.15
    assert (mean - clean).abs().mean() < 0.03
    one = lsh_attention(q, k, v, settings=st, dropout_p=0.4).out
    assert (one - clean).abs().mean() > 3 * (mean - clean).abs().mean()  # one draw is far noisier


@pytest.mark.parametrize("draw,expected_scale", [(0.5, 1 / (1 - 0.4)), (0.3, 0.0)])
def test_kept_weights_are_scaled_and_the_normaliser_is_not(monkeypatch, draw, expected_scale):
    """A draw that keeps every weight scales the output by 1 / (1 - p); one that drops every weight
    gives 0 (not NaN), and the log-sum-exp is the one without dropout in both: the reference's rule."""
    q, k, v = _qkv(t=24)
    st = LSHSettings(bucket_size=8, n_hashes=2, kernel="torch")
    clean = lsh_attention(q, k, v, settings=st, return_lse=True)
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(tuple(shape), draw, dtype=kw.get("dtype")))
    got = lsh_attention(q, k, v, settings=st, return_lse=True, dropout_p=0.4)
    monkeypatch.setattr(torch, "rand", real_rand)
    torch.testing.assert_close(got.out, clean.out * expected_scale)
    torch.testing.assert_close(got.lse, clean.lse)


def test_gradcheck_with_a_fixed_draw():
    q, k, v = (x.double().requires_grad_() for x in _qkv(b=1, h=1, t=12, d=4))
    st = LSHSettings(bucket_size=4, n_hashes=2, kernel="torch")

    def f(q, k, v):
        return lsh_attention(q, k, v, settings=st, dropout_p=0.3, generator=torch.Generator().manual_seed(2)).out

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_bad_dropout_and_the_triton_route_are_refused():
    q, k, v = _qkv(t=16)
    with pytest.raises(AttnKitError, match=r"dropout_p must be in \[0, 1\); got 1.0"):
        lsh_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(AttnKitError, match="dropout runs in PyTorch only"):
        lsh_attention(q, k, v, settings=LSHSettings(bucket_size=16, kernel="triton"), dropout_p=0.1)


def test_a_module_on_lsh_trains_with_dropout():
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, dropout=0.1, batch_first=True, impl="lsh",
                           impl_options={"bucket_size": 8, "n_hashes": 2}).train()
    x = torch.randn(3, 40, 32, requires_grad=True)
    out, _ = m(x, x, x, need_weights=False)
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    m.eval()
    a, _ = m(x, x, x, need_weights=False)
    b, _ = m(x, x, x, need_weights=False)
    assert torch.equal(a, b)  # no dropout in eval mode
