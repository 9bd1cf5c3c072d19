"""impl="triton_block_sparse" against the float64 reference: forward, lse, weights and q/k/v
gradients on every mask kind, T and S not multiples of the tiles, GQA, padded head dims, dead
rows, the decode kernel, and the refusals. Runs on CUDA where there is one, else in Triton's
interpreter on CPU tensors (small shapes: the interpreter runs every program in NumPy)."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, UnsupportedError

IMPL = "triton_block_sparse"
SMALL = {"block_q": 32, "block_k": 16, "bwd_block_q": 16, "bwd_block_k": 32}  # several tiles per row


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    fin = torch.isfinite(b)
    assert torch.equal(fin, torch.isfinite(a)), "non-finite entries differ"
    return ((a[fin] - b[fin]).norm() / b[fin].norm().clamp(min=1e-12)).item()


def _inputs(device, dtype, b=1, h=4, hkv=2, t=45, s=70, d=16, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    return mk(b, h, t, d), mk(b, hkv, s, d), mk(b, hkv, s, dv or d)


def _reference(q, k, v, mask, **kw):
    q64, k64, v64 = (x.detach().cpu().double().requires_grad_() for x in (q, k, v))
    out, lse = attnkit.attention(q64, k64, v64, mask, impl="reference", return_lse=True, **kw)
    return (q64, k64, v64), out, lse


MASKS = {
    "none": lambda t, s: None,
    "causal": lambda t, s: masks.causal(),
    "causal_top_left": lambda t, s: masks.causal(align="top_left"),
    "window": lambda t, s: masks.window(9),
    "padding": lambda t, s: masks.padding([s - 13, s]),
    "bigbird": lambda t, s: masks.window(5) | masks.global_tokens(3),
    "random": lambda t, s: masks.from_tensor(torch.rand(t, s, generator=torch.Generator().manual_seed(3)) < 0.3),
}
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", list(MASKS))
def test_forward_backward_match_the_reference(triton_device, kind, dtype):
    q, k, v = _inputs(triton_device, dtype, b=2 if kind == "padding" else 1)
    mask = MASKS[kind](q.shape[2], k.shape[2])
    out, lse = attnkit.attention(q, k, v, mask, impl=IMPL, return_lse=True, options=SMALL)
    assert out.dtype == dtype and lse.dtype == torch.float32 and out.device == q.device
    (q64, k64, v64), ref, ref_lse = _reference(q, k, v, mask)
    assert _rel(out, ref) < TOL[dtype]
    assert _rel(lse, ref_lse) < 1e-5 if dtype == torch.float32 else _rel(lse, ref_lse) < 1e-2
    # a loss that uses the lse too: its gradient folds into the backward's row term
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    live = torch.isfinite(ref_lse)
    ((out.float() * w).sum() + lse[live.to(lse.device)].sum()).backward()
    ((ref * w.double().cpu()).sum() + ref_lse[live].sum()).backward()
    for got, want in zip((q.grad, k.grad, v.grad), (q64.grad, k64.grad, v64.grad)):
        assert _rel(got, want) < 3 * TOL[dtype]


def test_float16_and_padded_head_dims(triton_device):
    q, k, v = _inputs(triton_device, torch.float16, d=24, dv=40, t=33, s=64)
    out = attnkit.attention(q, k, v, masks.causal(), impl=IMPL, options=SMALL)
    out.float().sum().backward()
    (q64, k64, v64), ref, _ = _reference(q, k, v, masks.causal())
    ref.sum().backward()
    assert out.shape == (1, 4, 33, 40)
    assert _rel(out, ref) < TOL[torch.float16]
    assert _rel(v.grad, v64.grad) < 1e-2 and _rel(q.grad, q64.grad) < 1e-2


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "random"])
def test_weights_are_recomputed_exactly(triton_device, kind):
    q, k, v = (x.detach() for x in _inputs(triton_device, torch.float32, b=2 if kind == "padding" else 1))
    mask = MASKS[kind](q.shape[2], k.shape[2])
    out, w = attnkit.attention(q, k, v, mask, impl=IMPL, return_weights=True, options=SMALL)
    _, ref, _ = _reference(q, k, v, mask)
    ref_w = attnkit.attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), mask, impl="reference",
                              return_weights=True)[1]
    assert w.shape == ref_w.shape and _rel(w, ref_w) < 1e-5
    assert torch.allclose(w.sum(-1).cpu(), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "padding", "causal"])
def test_decode_step_with_weights(triton_device, kind):
    q, k, v = (x.detach() for x in _inputs(triton_device, torch.float32, b=2, t=1, s=200))
    mask = MASKS[kind](1, 200)
    out, w, lse = attnkit.attention(q, k, v, mask, impl=IMPL, return_weights=True, return_lse=True)
    ref_out, ref_w = attnkit.attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), mask,
                                       impl="reference", return_weights=True)
    _, _, ref_lse = _reference(q, k, v, mask)
    assert _rel(out, ref_out) < 1e-5 and _rel(w, ref_w) < 1e-5 and _rel(lse, ref_lse) < 1e-6
    bf = attnkit.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, impl=IMPL)
    assert bf.dtype == torch.bfloat16 and _rel(bf, ref_out) < 2e-2


def test_rows_with_no_key_give_zeros_and_minus_inf(triton_device):
    q, k, v = _inputs(triton_device, torch.float32, t=40, s=40)
    keep = torch.ones(40, 40, dtype=torch.bool)
    keep[5:12] = False  # rows 5..11 see nothing
    mask = masks.from_tensor(keep)
    out, lse = attnkit.attention(q, k, v, mask, impl=IMPL, return_lse=True, options=SMALL)
    assert torch.all(out[:, :, 5:12] == 0) and torch.all(lse[:, :, 5:12] == -math.inf)
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert torch.all(q.grad[:, :, 5:12] == 0)
    _, ref, _ = _reference(q, k, v, mask)
    assert _rel(out, ref) < 1e-5


def test_nan_in_an_allowed_key_reaches_its_rows_only(triton_device):
    q, k, v = (x.detach() for x in _inputs(triton_device, torch.float32, t=40, s=40))
    k[0, 0, 30] = float("nan")
    out = attnkit.attention(q, k, v, masks.causal(), impl=IMPL, options=SMALL)
    rows = out[0, :2].isnan().any(-1)  # kv head 0 serves query heads 0 and 1
    assert not rows[:, :30].any() and rows[:, 30:].all()
    assert not out[0, 2:].isnan().any()
    k2 = k.clone()
    k2[0, :, 60:] = float("nan") if k2.shape[2] > 60 else 0.0
    padded = attnkit.attention(q, k, v, masks.padding([25]), impl=IMPL, options=SMALL)  # key 30 is hidden
    assert not padded.isnan().any()


def test_non_contiguous_inputs_and_tile_options(triton_device):
    q, k, v = (x.detach() for x in _inputs(triton_device, torch.float32, t=64, s=64))
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, T, D) view with other strides
    a = attnkit.attention(qt, k, v, masks.window(7), impl=IMPL, options={"block_q": 16, "block_k": 32})
    b = attnkit.attention(q, k, v, masks.window(7), impl=IMPL, options=SMALL)
    assert _rel(a, b) < 1e-6


def test_refusals_name_what_is_wrong(triton_device):
    q, k, v = _inputs(triton_device, torch.float32, t=20, s=20)
    with pytest.raises(AttnKitError, match="block_q"):
        attnkit.attention(q, k, v, impl=IMPL, options={"block_q": 48})
    with pytest.raises(AttnKitError, match="num_warps"):
        attnkit.attention(q, k, v, impl=IMPL, options={"num_warps": 3})
    with pytest.raises(UnsupportedError, match="not differentiable"):
        attnkit.attention(q, k, v, impl=IMPL, return_weights=True)
    with pytest.raises(UnsupportedError, match="dtype"):
        attnkit.attention(q.double(), k.double(), v.double(), impl=IMPL)
    with pytest.raises(UnsupportedError, match="score modifiers"):
        attnkit.attention(q, k, v, impl=IMPL, bias=torch.zeros(20, 20, device=q.device))


def test_auto_leaves_cpu_and_fused_masks_to_others(triton_device):
    q, k, v = (x.detach() for x in _inputs(triton_device, torch.float32, t=20, s=20))
    report = str(attnkit.explain_dispatch(q, k, v, masks.window(4)))
    assert "triton_block_sparse" in report
    if triton_device.type == "cpu":
        assert "CUDA tensors only" in report


def test_unavailable_without_cuda_or_interpreter(monkeypatch):
    from attnkit.kernels.triton_plan import triton_reason, triton_unavailable

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    why = triton_unavailable()
    assert why is not None and ("TRITON_INTERPRET" in why or "triton" in why)
    assert "CUDA" in (triton_reason(torch.device("cpu")) or "CUDA")
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(UnsupportedError, match="triton_block_sparse"):
        attnkit.attention(q, q, q, impl=IMPL)
