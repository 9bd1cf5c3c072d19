"""The native kernel's built-in score modifiers (bias, alibi, softcap, in any order) against the
reference: output, log-sum-exp and the gradients of q, k, v and the bias, with broadcast biases,
GQA, lengths that are not a multiple of the block, causal / window / dense masks, float32,
float64 (gradcheck) and bfloat16; the NaN policy; and what the dispatcher decides."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import attnkit
from attnkit import kernels, masks, registry, scores

pytestmark = pytest.mark.skipif(kernels.unavailable_reason() is not None,
                                reason=f"native kernel unavailable: {kernels.unavailable_reason()}")

B, H, HKV, T, S, D = 2, 4, 2, 37, 45, 8  # T, S not multiples of the block (8)


def _qkv(b, h, hkv, t, s, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
            for shape in ((b, h, t, d), (b, hkv, s, d), (b, hkv, s, d))]


def _run(impl, q, k, v, mask, bias=None, mods=(), bias_grad=True, **kw):
    """out, lse and the gradients of q, k, v (and the bias) of sum(out * c) + sum(lse * c2)."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    if bias is not None:
        bias = bias.detach().requires_grad_(bias_grad)
    out, lse = attnkit.attention(q, k, v, mask, bias=bias, score_mods=list(mods), impl=impl, return_lse=True, **kw)
    g = torch.Generator().manual_seed(5)
    c = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    c2 = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    ((out * c).sum() + torch.where(lse.isfinite(), lse * c2, 0.0).sum()).backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad, None if bias is None else bias.grad


def _check(got, ref, tol):
    for name, a, r in zip(("out", "lse", "dq", "dk", "dv", "dbias"), got, ref):
        if r is None:
            assert a is None, name
            continue
        assert a.shape == r.shape, name
        torch.testing.assert_close(a.double(), r.double(), atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


MASKS = {
    "dense": None,
    "causal": masks.causal(),
    "window": masks.causal() & masks.window(9, 0),
    "random": torch.rand(T, S, generator=torch.Generator().manual_seed(3)) < 0.4,
}
MODS = {
    "none": lambda: [],
    "alibi": lambda: [scores.alibi(scores.alibi_slopes(H))],
    "softcap": lambda: [scores.softcap(2.0)],
    "softcap_alibi": lambda: [scores.softcap(1.5), scores.alibi(H)],
    "alibi_softcap": lambda: [scores.alibi(H), scores.softcap(0.7)],
}
BIASES = [None, (B, H, T, S), (1, H, 1, S), (B, 1, T, S), (T, 1), (S,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("mods_name", list(MODS))
def test_native_mods_match_reference(mods_name, mask_name, dtype):
    q, k, v = _qkv(B, H, HKV, T, S, D, dtype)
    mask, tol = MASKS[mask_name], (1e-4 if dtype == torch.float32 else 1e-10)
    g = torch.Generator().manual_seed(7)
    for shape in BIASES if mods_name in ("none", "alibi_softcap") else BIASES[:3]:
        if shape is None and mods_name == "none":
            continue
        bias = None if shape is None else torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
        got = _run("native", q, k, v, mask, bias, MODS[mods_name](), options={"block": 8})
        ref = _run("reference", q, k, v, mask, bias, MODS[mods_name]())
        _check(got, ref, tol)


def test_native_bias_in_score_mods_list_keeps_its_place():
    """A bias placed after a soft-cap in score_mods is added after it (the reference's order);
    a second bias passed as bias= comes first. Both get their own gradient."""
    q, k, v = _qkv(B, H, HKV, T, S, D, torch.float64)
    g = torch.Generator().manual_seed(1)
    b1 = torch.randn(1, H, T, S, generator=g, dtype=torch.float64, requires_grad=True)
    b2 = (3 * torch.randn(B, 1, 1, S, generator=g, dtype=torch.float64)).requires_grad_()
    outs = {}
    for impl in ("native", "reference"):
        q1, k1, v1 = (x.detach().requires_grad_() for x in (q, k, v))
        out = attnkit.attention(q1, k1, v1, masks.causal(), bias=b1, impl=impl,
                                score_mods=[scores.softcap(1.0), scores.bias(b2), scores.alibi(H)])
        gb1, gb2, gq = torch.autograd.grad(out.square().sum(), (b1, b2, q1))
        outs[impl] = (out, gb1, gb2, gq)
    for a, r in zip(outs["native"], outs["reference"]):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("b,hkv", [(1, 1), (2, 2)])
def test_native_bias_gradient_with_two_threads(b, hkv):
    """Broadcast biases whose gradient several work items share (per-thread buffers), with the
    backward split by head or by key block."""
    torch.set_num_threads(2)
    q, k, v = _qkv(b, 4, hkv, 29, 70, D, torch.float64)
    for shape in [(1, 4, 1, 70), (b, 1, 29, 1), (1, 1, 1, 1), (b, 4, 29, 70)]:
        bias = torch.randn(*shape, dtype=torch.float64)
        got = _run("native", q, k, v, masks.causal(), bias, [scores.softcap(3.0)], options={"block": 8})
        ref = _run("reference", q, k, v, masks.causal(), bias, [scores.softcap(3.0)])
        _check(got, ref, 1e-10)


def test_native_mods_gqa_decode_step():
    q, k, v = _qkv(2, 8, 2, 1, 50, D, torch.float32)
    bias = torch.randn(2, 8, 1, 50)
    mods = [scores.alibi(8), scores.softcap(2.5)]
    got = _run("native", q, k, v, masks.padding([50, 31]), bias, mods, options={"block": 16})
    ref = _run("reference", q, k, v, masks.padding([50, 31]), bias, mods)
    _check(got, ref, 1e-4)


def test_native_bias_without_grad_and_other_dtype_is_not_expanded():
    """A float64 bias (stride-0 broadcast view of a row) for float32 inputs: no gradient asked."""
    q, k, v = _qkv(B, H, HKV, T, S, D, torch.float32)
    bias = torch.randn(1, 1, 1, S, dtype=torch.float64).expand(B, H, T, S)
    got = _run("native", q, k, v, masks.causal(), bias, bias_grad=False, options={"block": 8})
    ref = _run("reference", q, k, v, masks.causal(), bias, bias_grad=False)
    _check(got, ref, 1e-4)


def test_native_mods_gradcheck_float64():
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 1, 11, 13, 4, torch.float64, seed=1))
    bias = torch.randn(1, 2, 1, 13, dtype=torch.float64, requires_grad=True)
    mask = masks.causal() & masks.window(5, 0)
    mods = [scores.alibi([0.5, 0.25]), scores.softcap(1.3)]

    def fn(q, k, v, bias):
        return attnkit.attention(q, k, v, mask, bias=bias, score_mods=mods, impl="native", return_lse=True,
                                 options={"block": 4})

    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


@pytest.mark.parametrize("mods_name", ["alibi", "softcap_alibi"])
def test_native_mods_bfloat16_forward(mods_name):
    q, k, v = _qkv(B, H, HKV, 70, 70, 16, torch.bfloat16)
    bias = torch.randn(1, H, 1, 70).to(torch.bfloat16)
    out = attnkit.attention(q, k, v, masks.causal(), bias=bias, score_mods=MODS[mods_name](), impl="native",
                            options={"block": 16})
    ref = attnkit.attention(*(x.double() for x in (q, k, v)), masks.causal(), bias=bias.double(),
                            score_mods=MODS[mods_name](), impl="reference")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=2e-2)


def test_native_nan_bias_at_an_allowed_position_makes_the_row_nan():
    q, k, v = _qkv(1, 1, 1, 32, 32, D, torch.float32)
    bias = torch.zeros(32, 32)
    bias[10, 4] = math.nan   # allowed (causal): row 10 is NaN
    bias[3, 20] = math.nan   # hidden by the causal mask: row 3 stays finite
    for mods in ([], [scores.softcap(2.0)]):
        out = attnkit.attention(q, k, v, masks.causal(), bias=bias, score_mods=mods, impl="native",
                                options={"block": 8})
        assert out[0, 0, 10].isnan().all()
        rest = torch.cat([out[0, 0, :10], out[0, 0, 11:]])
        assert rest.isfinite().all()
    bias_g = bias.clone().requires_grad_()
    qg = q.clone().requires_grad_()
    out = attnkit.attention(qg, k, v, masks.causal(), bias=bias_g, score_mods=[scores.softcap(2.0)],
                            impl="native", options={"block": 8})
    out[0, 0, :10].sum().backward()  # rows that do not see the NaN
    assert qg.grad[0, 0, :10].isfinite().all() and bias_g.grad[:10].isfinite().all()


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mods_name", ["alibi", "softcap", "bias"])
def test_auto_now_picks_native_for_builtin_mods(mods_name, monkeypatch):
    q = torch.randn(1, H, 1031, 16)
    kw = {"bias": torch.randn(1, H, 1, 1031)} if mods_name == "bias" else {"score_mods": MODS[mods_name]()}
    mask = masks.causal() & masks.window(128, 0)
    rep = attnkit.explain_dispatch(q, q, q, mask, **kw)
    assert rep.chosen == "native", rep
    with monkeypatch.context() as m:  # a native that declines every modifier, as it used to
        m.setitem(registry._REGISTRY, "native", dataclasses.replace(registry.get_impl("native"), score_mods="none"))
        m.setattr(registry, "_VERSION", [registry._VERSION[0] + 1])
        before = attnkit.explain_dispatch(q, q, q, mask, **kw)
        assert before.chosen not in (None, "native") and before.reasons["native"]
    q.requires_grad_()
    assert attnkit.explain_dispatch(q, q, q, masks.causal(), **kw).chosen == "native"


def test_custom_score_mod_is_refused_by_native_with_a_reason():
    q = torch.randn(1, 2, 1033, 16)
    mod = scores.score_mod(lambda s, b, h, i, j: s + 0.1 * (i - j).abs(), name="alibi")  # a built-in's name
    mask = masks.causal() & masks.window(128, 0)
    rep = attnkit.explain_dispatch(q, q, q, mask, score_mods=[mod])
    assert rep.chosen != "native"
    why = " ".join(rep.reasons["native"])
    assert "user function" in why
    with pytest.raises(attnkit.AttnKitError, match="user function"):
        attnkit.attention(q, q, q, mask, score_mods=[mod], impl="native")
    slopes = torch.tensor([0.5, 0.25], requires_grad=True)
    rep = attnkit.explain_dispatch(q, q, q, mask, score_mods=[scores.alibi(slopes)])
    assert rep.chosen != "native"
