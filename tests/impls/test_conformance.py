"""Every registered exact implementation against the reference oracle, forward and backward.

The grid is registry x masks x shapes x dtypes x score modifiers; a combination an
implementation declares unsupported (its ImplSpec) is skipped with the dispatcher's reasons,
never by a hand-written list. The reference itself is checked against an independent naive
computation written here.

Tolerances: float64 1e-10 (atol and rtol); float32 2e-5 / 1e-5 on outputs and 1e-4 on
gradients; bfloat16/float16 by the ratio rule err(impl) <= 2 * err(reference in low precision)
+ 1e-2, both errors measured against the float64 reference (as in FlashAttention's tests).
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import get_impl, list_impls, masks, scores
from attnkit.call import make_call
from attnkit.dispatch import not_supported_reasons

EXACT = [n for n in list_impls() if get_impl(n).exact and "cpu" in get_impl(n).devices]  # CPU tensors here

# each shape is B, H, Hkv, T, S, D, Dv
SHAPES = {
    "square": (2, 4, 4, 13, 13, 16, 16),
    "gqa_t_ne_s": (2, 6, 2, 9, 21, 8, 12),
    "long_s": (1, 2, 1, 5, 70, 32, 8),
    "tiny": (1, 1, 1, 1, 1, 4, 4),
}


def _mask_cases(b: int, h: int, t: int, s: int) -> dict[str, masks.Mask | None]:
    g = torch.Generator().manual_seed(t * 31 + s)
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    lengths[0] = 0  # one batch element whose keys are all padding: fully masked rows
    layout = torch.rand(math.ceil(t / 4), math.ceil(s / 4), generator=g) < 0.5
    dense = torch.rand(b, 1, t, s, generator=g) < 0.5
    return {
        "none": None,
        "causal": masks.causal(),
        "causal_top_left": masks.causal("top_left"),
        "window": masks.window(2),
        "causal_window": masks.causal() & masks.window(3, 0),
        "dilated": masks.dilated(2, 2),
        "global_local": masks.global_tokens([0, 2] if min(t, s) > 2 else [0]) | masks.window(1),
        "random": masks.random(0.4, seed=3),
        "block_sparse": masks.block_sparse(layout, 4),
        "padding": masks.padding(lengths),
        "key_padding": masks.from_key_padding(torch.rand(b, s, generator=g) < 0.7),
        "dense_tensor": dense,
        "causal_and_padding": masks.causal() & masks.padding(lengths),
        "not_causal": ~masks.causal(),
    }


MASK_NAMES = list(_mask_cases(2, 2, 4, 4))
MODS = ["none", "bias", "alibi", "softcap"]


def _inputs(shape, dtype, seed=0):
    b, h, hkv, t, s, d, dv = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=torch.float64)
    return [x.to(dtype).requires_grad_() for x in (q, k, v)]


def _run(impl, q, k, v, mask, mods, **kw):
    """Output and gradients of sum(out * cotangent) for q, k, v."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = attnkit.attention(q, k, v, mask, impl=impl, score_mods=mods, **kw)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    (out * cot).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _mods_for(dtype, mod_name, h, t, s):
    """The score modifiers of a case; the bias tensor in the inputs' dtype."""
    if mod_name == "bias":
        return (scores.bias(torch.randn(h, t, s, generator=torch.Generator().manual_seed(1)).to(dtype)),)
    return {"none": (), "alibi": (scores.alibi(h),), "softcap": (scores.softcap(2.0),)}[mod_name]


def _check(impl, shape, mask_name, dtype, mod_name):
    b, h, _, t, s, _, _ = shape
    mask = _mask_cases(b, h, t, s)[mask_name]
    q, k, v = _inputs(shape, dtype)
    mods = _mods_for(dtype, mod_name, h, t, s)
    call = make_call(q, k, v, mask, score_mods=mods)
    reasons = not_supported_reasons(get_impl(impl), call)
    if reasons:
        pytest.skip(f"{impl}: " + "; ".join(reasons))
    got = _run(impl, q, k, v, mask, mods)
    q64, k64, v64 = (x.detach().double() for x in (q, k, v))
    mods64 = _mods_for(torch.float64, mod_name, h, t, s)
    ref = _run("reference", q64, k64, v64, mask, mods64)
    names = ("out", "dq", "dk", "dv")
    if dtype == torch.float64:
        for name, a, r in zip(names, got, ref):
            torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{impl} {n}: {m}")
    elif dtype == torch.float32:
        for name, a, r in zip(names, got, ref):
            tol = 2e-5 if name == "out" else 1e-4
            torch.testing.assert_close(a.double(), r, atol=tol, rtol=1e-5, msg=lambda m, n=name: f"{impl} {n}: {m}")
    else:
        low = _run("reference", q, k, v, mask, mods)
        for name, a, lo, r in zip(names, got, low, ref):
            err_impl = (a.double() - r).abs().max().item()
            err_ref = (lo.double() - r).abs().max().item()
            assert err_impl <= 2 * err_ref + 1e-2, f"{impl} {name}: err {err_impl:.3g} vs reference {err_ref:.3g}"
    for a in got:
        assert torch.isfinite(a).all(), f"{impl} produced non-finite values"


@pytest.mark.parametrize("impl", EXACT)
@pytest.mark.parametrize("mask_name", MASK_NAMES)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_impl_matches_reference_over_masks(impl, mask_name, shape_name, dtype):
    _check(impl, SHAPES[shape_name], mask_name, dtype, "none")


@pytest.mark.parametrize("impl", EXACT)
@pytest.mark.parametrize("mod_name", MODS)
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_impl_matches_reference_with_score_mods(impl, mod_name, mask_name, dtype):
    _check(impl, SHAPES["gqa_t_ne_s"], mask_name, dtype, mod_name)


@pytest.mark.parametrize("impl", EXACT)
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "dense_tensor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_impl_low_precision_ratio_rule(impl, mask_name, dtype):
    _check(impl, SHAPES["gqa_t_ne_s"], mask_name, dtype, "none")


@pytest.mark.parametrize("impl", EXACT)
@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_impl_matches_reference_other_scores(impl, score):
    q, k, v = _inputs(SHAPES["square"], torch.float64)
    call = make_call(q, k, v, masks.causal(), score=score)
    reasons = not_supported_reasons(get_impl(impl), call)
    if reasons:
        pytest.skip("; ".join(reasons))
    a = attnkit.attention(q, k, v, masks.causal(), score=score, impl=impl)
    r = attnkit.attention(q, k, v, masks.causal(), score=score, impl="reference")
    torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("impl", EXACT)
def test_returned_weights_match_reference(impl):
    q, k, v = _inputs(SHAPES["gqa_t_ne_s"], torch.float64)
    mask = masks.causal() & masks.padding([0, 15])
    call = make_call(q, k, v, mask, return_weights=True)
    reasons = not_supported_reasons(get_impl(impl), call)
    if reasons:
        pytest.skip("; ".join(reasons))
    out, w = attnkit.attention(q, k, v, mask, impl=impl, return_weights=True)
    ref_out, ref_w = attnkit.attention(q, k, v, mask, impl="reference", return_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-10, rtol=1e-10)
    assert (w[0] == 0).all()  # batch 0 has no keys: zero weights


# ------------------------------------------------------------------------------------------
# the reference itself against an independent naive computation
# ------------------------------------------------------------------------------------------


def _naive(q, k, v, allowed, scale):
    """Loop-free but independent: explicit GQA indexing, -inf fill, softmax, zero dead rows."""
    h, hkv = q.shape[1], k.shape[1]
    idx = torch.arange(h) // (h // hkv)
    s = torch.einsum("bhtd,bhsd->bhts", q, k[:, idx]) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhts,bhsd->bhtd", w, v[:, idx])


@pytest.mark.parametrize("mask_name", MASK_NAMES)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_reference_matches_naive(mask_name, shape_name):
    shape = SHAPES[shape_name]
    b, h, _, t, s, d, _ = shape
    mask = _mask_cases(b, h, t, s)[mask_name]
    q, k, v = (x.detach() for x in _inputs(shape, torch.float64))
    allowed = torch.ones(1, 1, t, s, dtype=torch.bool) if mask is None else attnkit.masks.as_mask(mask).dense4(t, s)
    got = attnkit.attention(q, k, v, mask, impl="reference")
    torch.testing.assert_close(got, _naive(q, k, v, allowed, 1 / math.sqrt(d)), atol=1e-12, rtol=1e-12)


def test_auto_runs_every_mask_and_matches_reference():
    shape = SHAPES["gqa_t_ne_s"]
    b, h, _, t, s, _, _ = shape
    q, k, v = (x.detach() for x in _inputs(shape, torch.float64))
    for name, mask in _mask_cases(b, h, t, s).items():
        got = attnkit.attention(q, k, v, mask)
        ref = attnkit.attention(q, k, v, mask, impl="reference")
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"mask {n}: {m}")
