"""The native C++ kernel against the reference: several tiles per row (runs of key blocks), GQA,
lengths that are not a multiple of the block, dead rows, head- and batch-dependent masks,
float32 / float64 / bfloat16, forward, backward and the log-sum-exp; gradcheck in float64; the
one-token decode path; NaN propagation. (The shared conformance grid in tests/impls runs it too.)"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import kernels, masks

pytestmark = pytest.mark.skipif(kernels.unavailable_reason() is not None,
                                reason=f"native kernel unavailable: {kernels.unavailable_reason()}")


def _qkv(b, h, hkv, t, s, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v)]


def _run(impl, q, k, v, mask, **kw):
    """Output, lse and the gradients of sum(out * c) + sum(lse_alive * c2) for q, k, v."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, lse = attnkit.attention(q, k, v, mask, impl=impl, return_lse=True, **kw)
    g = torch.Generator().manual_seed(5)
    c = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    c2 = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    loss = (out * c).sum() + torch.where(lse.isfinite(), lse * c2, 0.0).sum()
    loss.backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


B, H, HKV, T, S = 2, 4, 2, 150, 173


def _masks():
    g = torch.Generator().manual_seed(3)
    per_head = torch.rand(B, H, T, S, generator=g) < 0.3
    per_head[1, 2, 7] = False  # a dead row in one head only
    return {
        "none": None,
        "causal": masks.causal(),
        "causal_window": masks.causal() & masks.window(40, 0),
        "bigbird": attnkit.patterns.bigbird(16, window_blocks=3, global_blocks=2, random_blocks=2),
        "dense_random": torch.rand(T, S, generator=g) < 0.2,
        "per_head_dense": per_head,
        "causal_padding": masks.causal() & masks.padding([0, 120]),  # batch 0: every row dead
        "top_left_causal": masks.causal("top_left"),
    }


@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_native_matches_reference(mask_name, dtype):
    mask = _masks()[mask_name]
    q, k, v = _qkv(B, H, HKV, T, S, 24, 20, dtype)
    got = _run("native", q, k, v, mask, options={"block": 16})
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask)
    names = ("out", "lse", "dq", "dk", "dv")
    if dtype == torch.float32:
        for name, a, r in zip(names, got, ref):
            tol = 2e-5 if name in ("out", "lse") else 1e-4
            torch.testing.assert_close(a.double(), r, atol=tol, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    else:
        low = _run("reference", q, k, v, mask, options={"upcast": False})
        for name, a, lo, r in zip(names, got, low, ref):
            ok = r.isfinite()
            err = (a.double() - r)[ok].abs().max().item()
            err_low = (lo.double() - r)[ok].abs().max().item()
            assert err <= 2 * err_low + 1e-2, f"{name}: {err:.3g} vs low-precision reference {err_low:.3g}"
    assert got[1].dtype == torch.float32
    assert torch.equal(got[1].isneginf(), ref[1].isneginf())  # the same dead rows
    for a in (got[0], *got[2:]):
        assert a.isfinite().all()


def test_native_dead_rows_are_zero_with_zero_gradient():
    q, k, v = _qkv(1, 2, 2, 40, 40, 8, 8, torch.float32)
    allowed = torch.rand(40, 40, generator=torch.Generator().manual_seed(0)) < 0.5
    allowed[[3, 17, 39]] = False
    out, lse, dq, _, _ = _run("native", q, k, v, allowed, options={"block": 8})
    assert (out[:, :, [3, 17, 39]] == 0).all() and (dq[:, :, [3, 17, 39]] == 0).all()
    assert lse[:, :, [3, 17, 39]].isneginf().all() and lse[:, :, :3].isfinite().all()


def test_native_gradcheck_float64():
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 1, 11, 13, 4, 3, torch.float64, seed=1))
    mask = masks.causal() & masks.window(5, 0)
    fn = lambda q, k, v: attnkit.attention(q, k, v, mask, impl="native", options={"block": 4})  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    fn_lse = lambda q, k, v: attnkit.attention(q, k, v, mask, impl="native", return_lse=True,  # noqa: E731
                                               options={"block": 4})[1]
    assert torch.autograd.gradcheck(fn_lse, (q, k, v))


@pytest.mark.parametrize("mask", [None, "padding", "per_head"])
def test_native_decode_step_with_gqa(mask):
    q, k, v = _qkv(2, 8, 2, 1, 300, 32, 32, torch.float32)
    per_head = torch.rand(2, 8, 1, 300, generator=torch.Generator().manual_seed(2)) < 0.5
    m = {None: None, "padding": masks.padding([300, 123]), "per_head": per_head}[mask]
    got = attnkit.attention(q, k, v, m, impl="native")
    ref = attnkit.attention(q.double(), k.double(), v.double(), m, impl="reference")
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5)


def test_native_nan_in_an_attended_query_propagates():
    q, k, v = _qkv(1, 1, 1, 64, 64, 8, 8, torch.float32)
    q[0, 0, 10, 3] = math.nan
    out = attnkit.attention(q, k, v, masks.causal(), impl="native", options={"block": 16})
    assert out[0, 0, 10].isnan().all()
    assert out[0, 0, :10].isfinite().all() and out[0, 0, 11:].isfinite().all()


def test_native_head_dim_256_and_large_blocks():
    q, k, v = _qkv(1, 2, 2, 70, 70, 256, 256, torch.float32)
    got = _run("native", q, k, v, masks.causal(), options={"block": 512})
    ref = _run("reference", *(x.double() for x in (q, k, v)), masks.causal())
    for a, r in zip(got, ref):
        torch.testing.assert_close(a.double(), r, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["block_sparse", "blockwise"])
def test_tile_impls_hand_large_calls_to_the_kernel(impl, monkeypatch):
    from attnkit.kernels import tiles

    calls = []
    real = tiles._TileAttention.apply
    monkeypatch.setattr(tiles._TileAttention, "apply", lambda *a: calls.append(1) or real(*a))
    q, k, v = _qkv(1, 2, 1, 1024, 1024, 16, 16, torch.float32)
    mask = masks.causal() & masks.window(200, 0)
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask)
    got = _run(impl, q, k, v, mask)
    assert len(calls) == 1
    for a, r in zip(got, ref):
        torch.testing.assert_close(a.double(), r, atol=1e-4, rtol=1e-5)
    small = attnkit.attention(q[:, :, :100], k[:, :, :100], v[:, :, :100], mask, impl=impl)
    pure = attnkit.attention(q, k, v, mask, impl=impl, options={"kernel": "torch"})
    assert len(calls) == 1  # small calls and kernel="torch" keep the pure-PyTorch path
    torch.testing.assert_close(pure.double(), ref[0], atol=2e-5, rtol=1e-5)
    assert small.isfinite().all()


def test_bfloat16_products_take_bfloat16_operands(monkeypatch):
    """Where libtorch has MKL's bfloat16 GEMM, bfloat16 inputs reach the kernel as they are (its
    products accumulate in float32); float16 is widened to float32 first."""
    from attnkit.kernels import native_module, tiles

    seen = []
    real = tiles._TileAttention.apply

    def spy(q, k, v, *rest):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, *rest)

    monkeypatch.setattr(tiles._TileAttention, "apply", spy)
    q, k, v = _qkv(1, 2, 2, 64, 64, 16, 16, torch.bfloat16)
    out = attnkit.attention(q, k, v, masks.causal(), impl="native")
    expected = torch.bfloat16 if native_module().has_bf16_gemm() else torch.float32
    assert seen == [(expected,) * 3] and out.dtype == torch.bfloat16
    assert tiles.kernel_dtype(torch.float16) == torch.float32 and tiles.kernel_dtype(torch.float64) == torch.float64


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mask_name", ["none", "causal", "dense_random"])
def test_bfloat16_backward_with_packed_operands(mask_name, threads):
    """The bfloat16 backward with even blocks takes Q and dO packed once as row pairs and each key
    block's K^T, V^T and K packed once: an odd T (the last pair half padding), GQA, several key
    blocks per run and a soft-cap (dS through the modifier) give the float64 reference's gradients
    as closely as attnkit's bfloat16 reference does (within 2x and 1e-2)."""
    mask = {"none": None, "causal": masks.causal(),
            "dense_random": torch.rand(151, 160, generator=torch.Generator().manual_seed(9)) < 0.4}[mask_name]
    q, k, v = _qkv(2, 4, 2, 151, 160, 32, 16, torch.bfloat16, seed=11)
    mods = [attnkit.scores.softcap(3.0)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _run("native", q, k, v, mask, score_mods=mods, options={"block_q": 16, "block_k": 32})
    finally:
        torch.set_num_threads(previous)
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask, score_mods=mods)
    low = _run("reference", q, k, v, mask, score_mods=mods, options={"upcast": False})
    for name, a, lo, r in zip(("out", "lse", "dq", "dk", "dv"), got, low, ref):
        err = (a.double() - r).abs().max().item()
        err_low = (lo.double() - r).abs().max().item()
        assert err <= 2 * err_low + 1e-2, f"{name}: {err:.3g} vs low-precision reference {err_low:.3g}"


@pytest.mark.parametrize("mask_name", ["none", "causal", "dense_random"])
def test_bfloat16_odd_sizes(mask_name):
    """bfloat16 products with an odd inner dimension in every product (head dims 23 / 19, odd
    T and S, blocks of 15 and 17 rows / keys), forward and backward, as close to the float64
    reference as attnkit's bfloat16 reference is (within 2x and 1e-2)."""
    mask = {"none": None, "causal": masks.causal(),
            "dense_random": torch.rand(131, 149, generator=torch.Generator().manual_seed(4)) < 0.4}[mask_name]
    q, k, v = _qkv(1, 3, 1, 131, 149, 23, 19, torch.bfloat16, seed=7)
    got = _run("native", q, k, v, mask, options={"block_q": 15, "block_k": 17})
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask)
    low = _run("reference", q, k, v, mask, options={"upcast": False})
    for name, a, lo, r in zip(("out", "lse", "dq", "dk", "dv"), got, low, ref):
        ok = r.isfinite()
        err = (a.double() - r)[ok].abs().max().item()
        err_low = (lo.double() - r)[ok].abs().max().item()
        assert err <= 2 * err_low + 1e-2, f"{name}: {err:.3g} vs low-precision reference {err_low:.3g}"
