"""``block_sparse`` and ``blockwise`` hand large calls whose score modifiers are all built-in
(bias, alibi, softcap) to the native kernel, with the reference's output, log-sum-exp and
gradients; a user's score modifier keeps their pure-PyTorch path."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import kernels, masks, scores
from attnkit.kernels import tiles

pytestmark = pytest.mark.skipif(kernels.unavailable_reason() is not None,
                                reason=f"native kernel unavailable: {kernels.unavailable_reason()}")

B, H, HKV, T, D = 1, 4, 2, 1024, 16  # T x T = 2**20: the smallest call the tile impls hand over


@pytest.fixture
def kernel_calls(monkeypatch):
    """The number of times the kernel's autograd function runs, and which modifier kinds it got."""
    calls: list[list[int]] = []
    real = tiles._TileAttention.apply

    def counted(q, k, v, plan, scale, mods, *biases):
        calls.append(list(mods[0]))
        return real(q, k, v, plan, scale, mods, *biases)

    monkeypatch.setattr(tiles._TileAttention, "apply", counted)
    return calls


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).float()
            for shape in ((B, H, T, D), (B, HKV, T, D), (B, HKV, T, D))]


def _run(impl, q, k, v, mask, bias, mods, **kw):
    """out, lse and the gradients of q, k, v of sum(out * c) + sum(lse * c2)."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, lse = attnkit.attention(q, k, v, mask, bias=bias, score_mods=list(mods), impl=impl, return_lse=True, **kw)
    g = torch.Generator().manual_seed(5)
    c = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    c2 = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    ((out * c).sum() + torch.where(lse.isfinite(), lse * c2, 0.0).sum()).backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def _check(got, ref, tol):
    for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
        assert a.shape == r.shape, name
        torch.testing.assert_close(a.double(), r.double(), atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


MASK = masks.causal() & masks.window(200, 0)


@pytest.mark.parametrize("impl", ["block_sparse", "blockwise"])
def test_builtin_mods_run_on_the_kernel_inside_tile_impls(impl, kernel_calls):
    q, k, v = _qkv()
    bias = torch.randn(1, H, 1, T, generator=torch.Generator().manual_seed(2))
    mods = [scores.alibi(scores.alibi_slopes(H)), scores.softcap(3.0)]
    got = _run(impl, q, k, v, MASK, bias, mods)
    assert kernel_calls == [[0, 1, 2]]  # bias (from bias=) first, then alibi and softcap in order
    ref = _run("reference", *(x.double() for x in (q, k, v)), MASK, bias.double(), mods)
    _check(got, ref, 1e-4)
    pure = _run(impl, q, k, v, MASK, bias, mods, options={"kernel": "torch"})
    assert len(kernel_calls) == 1  # kernel="torch" keeps the pure-PyTorch path
    _check(pure, ref, 1e-4)


@pytest.mark.parametrize("impl", ["block_sparse", "blockwise"])
def test_user_score_mod_keeps_the_pytorch_path(impl, kernel_calls):
    q, k, v = _qkv(1)
    # the same function as a built-in ALiBi, but a user's: never taken for the built-in
    slopes = scores.alibi_slopes(H)
    user = scores.score_mod(lambda s, b, h, i, j: s - slopes.to(s)[h] * (i - j).abs(), name="alibi")
    mods = [user, scores.softcap(3.0)]
    got = _run(impl, q, k, v, MASK, None, mods)
    assert kernel_calls == []
    ref = _run("reference", *(x.double() for x in (q, k, v)), MASK, None, mods)
    _check(got, ref, 1e-4)
    builtin = attnkit.attention(q, k, v, MASK, score_mods=[scores.alibi(slopes), scores.softcap(3.0)], impl=impl)
    assert len(kernel_calls) == 1
    torch.testing.assert_close(builtin.double(), ref[0], atol=1e-4, rtol=1e-4)
