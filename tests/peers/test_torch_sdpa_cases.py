"""PyTorch's ``scaled_dot_product_attention`` tests (``test/test_transformers.py``), re-expressed
for every exact attnkit implementation.

Re-expressed here, each against ``torch.nn.functional.scaled_dot_product_attention`` computed in
float64 in the same test (outputs and gradients):

* attention masks of every broadcastable shape ((T, S), (1, S), (H, T, S), (B, 1, 1, S),
  (1, 1, 1, S), (1, H, 1, S), (B, 1, T, S), (B, H, T, S)) and dtype (bool, float, float with
  ``-inf``), at T == S, T < S and T > S; a bool mask is attnkit's ``mask``, a float one its ``bias``;
* ``is_causal`` with T != S (SDPA aligns top-left: ``masks.causal(align="top_left")``) and
  ``torch.nn.attention.bias`` ``causal_upper_left`` / ``causal_lower_right`` (attnkit's default
  ``masks.causal()`` is bottom-right);
* grouped-query attention (``enable_gqa=True``), a custom ``scale``, head dims D != Dv,
  non-contiguous inputs cut from a packed qkv tensor, ``dropout_p=0``;
* fully masked rows (``test_fully_masked_out_rows``): zero output and zero gradient;
* bfloat16 / float16 by the ratio rule against SDPA's own low-precision error, and float16
  inputs whose raw or scaled scores leave the float16 range (SDPA on the CPU accumulates in float32);
* gradcheck in float64, and the input checks (``test_invalid_inputs_*``): attnkit raises its
  own ``ShapeError`` / ``DTypeError`` where SDPA raises ``RuntimeError``.

Not re-expressed (not portable to attnkit or the CPU): backend selection (``sdpa_kernel``),
nested tensors, CUDA-only kernels and their memory checks, dropout masks drawn by a specific RNG.
Documented differences: attnkit takes 4-D ``(B, H, T, D)`` inputs only (SDPA also takes 3-D),
and its mask tensors must be 2-D to 4-D (SDPA also broadcasts a 1-D ``(S,)`` mask).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peer_support import EXACT, close, dense_attention, randn, run_with_grads, skip_unsupported
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, DTypeError, ShapeError

B, H, D = 2, 4, 16
SIZES = {"square": (13, 13), "t_lt_s": (9, 21), "t_gt_s": (200, 50)}
MASK_SHAPES = {
    "T,S": lambda t, s: (t, s),
    "1,S": lambda t, s: (1, s),
    "H,T,S": lambda t, s: (H, t, s),
    "B,1,1,S": lambda t, s: (B, 1, 1, s),
    "1,1,1,S": lambda t, s: (1, 1, 1, s),
    "1,H,1,S": lambda t, s: (1, H, 1, s),
    "B,1,T,S": lambda t, s: (B, 1, t, s),
    "B,H,T,S": lambda t, s: (B, H, t, s),
}
MASK_KINDS = ["bool", "float", "float_inf"]


def _qkv(t, s, dtype=torch.float32, *, h=H, hkv=H, d=D, dv=D, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (randn(B, h, t, d, gen=g, dtype=dtype, scale=scale), randn(B, hkv, s, d, gen=g, dtype=dtype, scale=scale),
            randn(B, hkv, s, dv, gen=g, dtype=dtype))


def _sdpa_mask(kind, shape, seed=1):
    """SDPA's ``attn_mask`` of ``shape``: bool (True = take part) or float (added to the scores).
    Key 0 always takes part, so no row is fully masked (those have their own test)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=g) < 0.6
    keep[..., 0] = True
    if kind == "bool":
        return keep
    add = torch.randn(shape, generator=g, dtype=torch.float64)
    return add.masked_fill(~keep, -math.inf) if kind == "float_inf" else add


def _attnkit_args(attn_mask, dtype):
    """SDPA's ``attn_mask`` as attnkit arguments: a bool mask is ``mask``, a float one ``bias``."""
    if attn_mask is None:
        return {}
    if attn_mask.dtype == torch.bool:
        return {"mask": attn_mask}
    return {"bias": attn_mask.to(dtype)}


def _torch64(q, k, v, attn_mask=None, **kw):
    """Output and gradients of SDPA in float64 on the same values."""
    if type(attn_mask) is torch.Tensor and attn_mask.is_floating_point():  # not a CausalBias
        attn_mask = attn_mask.double()

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kw)
    return run_with_grads(fn, *(x.double() for x in (q, k, v)))


def _attnkit(impl, q, k, v, **kw):
    def fn(q, k, v):
        return attnkit.attention(q, k, v, impl=impl, **kw)
    return run_with_grads(fn, q, k, v)


def _check_all(impl, got, want, what):
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        close(a, b, "out" if name == "out" else "grad", msg=f"{impl} {what} {name}")


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", list(MASK_SHAPES))
@pytest.mark.parametrize("impl", EXACT)
def test_masks_of_every_shape_and_dtype(impl, shape, kind, size):
    t, s = SIZES[size]
    q, k, v = _qkv(t, s)
    am = _sdpa_mask(kind, MASK_SHAPES[shape](t, s))
    args = _attnkit_args(am, q.dtype)
    skip_unsupported(impl, q, k, v, **args)
    _check_all(impl, _attnkit(impl, q, k, v, **args), _torch64(q, k, v, am), f"mask {shape} {kind}")


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("impl", EXACT)
def test_masks_in_float64(impl, kind):
    t, s = SIZES["t_lt_s"]
    q, k, v = _qkv(t, s, torch.float64)
    am = _sdpa_mask(kind, (B, 1, t, s))
    args = _attnkit_args(am, q.dtype)
    skip_unsupported(impl, q, k, v, **args)
    _check_all(impl, _attnkit(impl, q, k, v, **args), _torch64(q, k, v, am), f"float64 {kind}")


@pytest.mark.parametrize("ts", [(7, 7), (5, 12), (12, 5)], ids=lambda ts: f"T{ts[0]}_S{ts[1]}")
@pytest.mark.parametrize("impl", EXACT)
def test_is_causal_aligns_top_left(impl, ts):
    """``is_causal=True`` in SDPA is ``masks.causal(align="top_left")``: query i sees keys j <= i."""
    q, k, v = _qkv(*ts)
    m = masks.causal(align="top_left")
    skip_unsupported(impl, q, k, v, m)
    want = _torch64(q, k, v, is_causal=True)
    _check_all(impl, _attnkit(impl, q, k, v, mask=m), want, "is_causal")
    _check_all(impl, _attnkit(impl, q, k, v, mask=m), _torch64(q, k, v, causal_upper_left(*ts)), "upper_left")


@pytest.mark.filterwarnings("ignore:Lower right causal bias")
@pytest.mark.parametrize("ts", [(7, 7), (5, 12), (12, 5)], ids=lambda ts: f"T{ts[0]}_S{ts[1]}")
@pytest.mark.parametrize("impl", EXACT)
def test_causal_lower_right_is_the_default_causal_mask(impl, ts):
    """``causal_lower_right`` (test_causal_variants) is attnkit's default ``masks.causal()``;
    with T > S its first T - S rows see no key: zeros in both."""
    q, k, v = _qkv(*ts)
    skip_unsupported(impl, q, k, v, masks.causal())
    want = _torch64(q, k, v, causal_lower_right(*ts))
    got = _attnkit(impl, q, k, v, mask=masks.causal())
    _check_all(impl, got, want, "lower_right")
    if ts[0] > ts[1]:
        assert (got[0][:, :, : ts[0] - ts[1]] == 0).all()


@pytest.mark.parametrize("hkv", [1, 2, 3])
@pytest.mark.parametrize("mask_name", ["none", "causal", "bool"])
@pytest.mark.parametrize("impl", EXACT)
def test_grouped_query_attention(impl, mask_name, hkv):
    """``enable_gqa=True``: query head h reads kv head h // (H / Hkv), as in attnkit."""
    t, s = 9, 21
    q, k, v = _qkv(t, s, h=6, hkv=hkv)
    am = {"none": None, "causal": causal_upper_left(t, s), "bool": _sdpa_mask("bool", (t, s))}[mask_name]
    m = {"none": None, "causal": masks.causal(align="top_left"), "bool": am}[mask_name]
    skip_unsupported(impl, q, k, v, m)
    _check_all(impl, _attnkit(impl, q, k, v, mask=m), _torch64(q, k, v, am, enable_gqa=True), "gqa")


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
@pytest.mark.parametrize("impl", EXACT)
def test_custom_scale(impl, scale):
    q, k, v = _qkv(9, 21)
    am = _sdpa_mask("bool", (9, 21))
    skip_unsupported(impl, q, k, v, am, scale=scale)
    _check_all(impl, _attnkit(impl, q, k, v, mask=am, scale=scale), _torch64(q, k, v, am, scale=scale), "scale")


@pytest.mark.parametrize("impl", EXACT)
def test_head_dims_differ(impl):
    """D != Dv (test_fused_attention_different_dk_dv)."""
    q, k, v = _qkv(9, 21, d=8, dv=24)
    skip_unsupported(impl, q, k, v, masks.causal(align="top_left"))
    _check_all(impl, _attnkit(impl, q, k, v, mask=masks.causal(align="top_left")),
               _torch64(q, k, v, is_causal=True), "D != Dv")


@pytest.mark.parametrize("impl", EXACT)
def test_non_contiguous_inputs_from_packed_qkv(impl):
    """q, k, v as strided views of one packed ``(B, T, 3, H, D)`` tensor."""
    g = torch.Generator().manual_seed(3)
    packed = randn(B, 11, 3, H, D, gen=g, dtype=torch.float32)
    q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), non-contiguous
    assert not q.is_contiguous()
    skip_unsupported(impl, q, k, v)
    got = attnkit.attention(q, k, v, impl=impl)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    close(got, want)


def _fully_masked_case(t=16):
    """The mask of test_fully_masked_out_rows: every 4th row empty, else keys with j % 5 == i % 5."""
    keep = torch.ones(1, 1, t, t, dtype=torch.bool)
    keep[0, 0, ::4, :] = False
    idx = torch.arange(t)
    return keep & (idx[:, None] % 5 == idx[None, :] % 5)


@pytest.mark.parametrize("as_bias", [False, True], ids=["bool", "float_inf"])
@pytest.mark.parametrize("impl", EXACT)
def test_fully_masked_rows_give_zero_output_and_zero_grad(impl, as_bias):
    """attnkit's policy: a row with no allowed key has a zero output and zero gradient. SDPA in
    this torch agrees on the CPU (nn.MultiheadAttention returning weights gives NaN there: see
    the module's cases)."""
    keep = _fully_masked_case()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, 1, 16, 8, generator=g) for _ in range(3))
    am = torch.zeros(keep.shape).masked_fill(~keep, -math.inf) if as_bias else keep
    args = _attnkit_args(am, q.dtype)
    skip_unsupported(impl, q, k, v, **args)
    got = _attnkit(impl, q, k, v, **args)
    dead = ~keep.any(-1)  # (1, 1, T) rows with no key
    assert dead.sum() == 4
    for name, x in zip(("out", "dq"), got[:2]):
        assert torch.isfinite(x).all(), f"{impl} {name} not finite"
        assert (x[dead] == 0).all(), f"{impl} {name} not zero on fully masked rows"
    for x in got[2:]:
        assert torch.isfinite(x).all()
    want = _torch64(q, k, v, am)
    alive = ~dead
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        if name in ("out", "dq"):
            a, b = a[alive], b[alive]
        close(a, b, "out" if name == "out" else "grad", msg=f"{impl} {name}")


@pytest.mark.parametrize("impl", EXACT)
def test_dropout_p_zero_is_deterministic_and_equal_to_no_dropout(impl):
    q, k, v = _qkv(9, 21)
    skip_unsupported(impl, q, k, v, masks.causal(), dropout_p=0.0)
    a = attnkit.attention(q, k, v, masks.causal(), dropout_p=0.0, impl=impl)
    b = attnkit.attention(q, k, v, masks.causal(), dropout_p=0.0, impl=impl)
    assert torch.equal(a, b)
    assert torch.equal(a, attnkit.attention(q, k, v, masks.causal(), impl=impl))
    close(a, F.scaled_dot_product_attention(q.double(), k.double(), v.double(), dropout_p=0.0,
                                            attn_mask=masks.causal().dense(9, 21)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("mask_name", ["none", "bool", "causal"])
@pytest.mark.parametrize("impl", EXACT)
def test_low_precision_ratio_rule_against_sdpa(impl, mask_name, dtype):
    """err(attnkit impl) <= 2 * err(baseline) + 1e-3 on outputs and gradients, all measured against
    SDPA in float64 on the same (rounded) inputs; the baseline error is the larger of SDPA's in
    low precision and plain-torch attention's in low precision (FlashAttention's rule)."""
    t, s = 9, 21
    q, k, v = _qkv(t, s, dtype)
    am = {"none": None, "bool": _sdpa_mask("bool", (t, s)), "causal": masks.causal("top_left").dense(t, s)}[mask_name]
    skip_unsupported(impl, q, k, v, am)
    got = _attnkit(impl, q, k, v, mask=am)
    want = _torch64(q, k, v, am)
    baselines = (run_with_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=am), q, k, v),
                 run_with_grads(lambda q, k, v: dense_attention(q, k, v, am), q, k, v))
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        assert got[i].dtype == dtype
        err = (got[i].double() - want[i]).abs().max().item()
        base = max((b[i].double() - want[i]).abs().max().item() for b in baselines)
        assert err <= 2 * base + 1e-3, f"{impl} {name}: err {err:.3g} vs baseline {base:.3g}"


def _fp16_overflow_case(impl, spread, scaled_beyond):
    """float16 inputs with large entries: raw products q . k beyond float16's largest value
    (65504), the scaled scores below it or not. SDPA (float32 accumulation) stays finite and
    accurate; so must attnkit."""
    q, k, v = _qkv(13, 13, torch.float16, scale=spread)
    raw = q.double() @ k.double().transpose(-2, -1)
    assert raw.abs().max() > 65504
    assert (raw.abs().max() / math.sqrt(D) > 65504) == scaled_beyond
    skip_unsupported(impl, q, k, v)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch_low = F.scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(torch_low).all()
    got = attnkit.attention(q, k, v, impl=impl)
    assert torch.isfinite(got).all(), f"{impl} gave non-finite values"
    err, err_sdpa = ((x.double() - want).abs().max().item() for x in (got, torch_low))
    assert err <= 2 * err_sdpa + 1e-2, f"{impl}: err {err:.3g} vs SDPA's {err_sdpa:.3g}"


@pytest.mark.parametrize("impl", EXACT)
def test_fp16_raw_products_beyond_fp16_range(impl):
    _fp16_overflow_case(impl, spread=80.0, scaled_beyond=False)


@pytest.mark.parametrize("impl", EXACT)
def test_fp16_scaled_scores_beyond_fp16_range(impl):
    """The scaled scores themselves leave the float16 range; the softmax is near one-hot."""
    _fp16_overflow_case(impl, spread=150.0, scaled_beyond=True)


@pytest.mark.parametrize("fast", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["fast", "full"])
@pytest.mark.parametrize("mask_name", ["none", "bool_with_dead_row", "float"])
@pytest.mark.parametrize("impl", EXACT)
def test_gradcheck_float64(impl, mask_name, fast):
    """gradcheck (fast mode: random projections of the Jacobian; full mode marked slow)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (randn(1, 2, n, 4, gen=g, grad=True) for n in (3, 4, 4))
    keep = torch.rand(3, 4, generator=g) < 0.6
    keep[0] = False  # a fully masked row: zero output, zero gradient
    keep[1:, 0] = True
    args = {"none": {}, "bool_with_dead_row": {"mask": keep},
            "float": {"bias": randn(3, 4, gen=g)}}[mask_name]
    skip_unsupported(impl, q, k, v, **args)
    assert torch.autograd.gradcheck(lambda q, k, v: attnkit.attention(q, k, v, impl=impl, **args), (q, k, v),
                                    fast_mode=fast)


@pytest.mark.parametrize("impl", EXACT)
def test_invalid_inputs_raise_attnkit_errors(impl):
    """The cases of SDPA's input checks; attnkit raises its own errors, naming the argument."""
    q, k, v = _qkv(5, 5)
    with pytest.raises(DTypeError, match="share one dtype"):
        attnkit.attention(q, k.double(), v, impl=impl)
    with pytest.raises(ShapeError, match="head dim"):
        attnkit.attention(q, k[..., :8], v, impl=impl)
    with pytest.raises(ShapeError, match="batch sizes differ"):
        attnkit.attention(q, k[:1], v[:1], impl=impl)
    with pytest.raises(ShapeError, match="multiple of key/value heads"):
        attnkit.attention(q, k[:, :3], v[:, :3], impl=impl)
    with pytest.raises(ShapeError, match="q must be a 4-D tensor"):  # SDPA also takes 3-D inputs
        attnkit.attention(q[0], k[0], v[0], impl=impl)
    with pytest.raises(ShapeError, match="q must be a 4-D tensor"):
        attnkit.attention(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0], impl=impl)
    with pytest.raises(DTypeError, match="torch.bool"):  # integer masks are refused
        attnkit.attention(q, k, v, torch.ones(5, 5, dtype=torch.int64), impl=impl)
    with pytest.raises(ShapeError, match="2-D to 4-D"):  # SDPA would broadcast a 1-D (S,) mask
        attnkit.attention(q, k, v, torch.ones(5, dtype=torch.bool), impl=impl)
    with pytest.raises(ShapeError, match="broadcastable"):
        attnkit.attention(q, k, v, torch.ones(4, 5, dtype=torch.bool), impl=impl)
    with pytest.raises(AttnKitError, match="dropout_p"):
        attnkit.attention(q, k, v, dropout_p=1.5, impl=impl)
    with pytest.raises(AttnKitError, match="scale"):
        attnkit.attention(q, k, v, scale=math.inf, impl=impl)
    with pytest.raises(DTypeError, match="floating"):
        attnkit.attention(q.long(), k.long(), v.long(), impl=impl)
