"""Shared pieces of the peer-suite tests: the exact implementations, skips derived from their
declared capabilities, a dense reference written in plain torch, and tolerances by dtype."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import attnkit
from attnkit.call import make_call

EXACT = [n for n in attnkit.list_impls() if attnkit.get_impl(n).exact
         and "cpu" in attnkit.get_impl(n).devices]  # these cases run on CPU tensors

# forward / gradient tolerances by dtype (absolute, relative)
TOL = {
    torch.float64: {"out": (1e-10, 1e-10), "grad": (1e-10, 1e-10)},
    torch.float32: {"out": (2e-5, 1e-5), "grad": (1e-4, 1e-5)},
}


def reasons(impl: str, q: Tensor, k: Tensor, v: Tensor, mask=None, **kwargs) -> list[str]:
    """Why ``impl`` cannot run this call, from its declared capabilities (empty: it can)."""
    return attnkit.not_supported_reasons(attnkit.get_impl(impl), make_call(q, k, v, mask, **kwargs))


def skip_unsupported(impl: str, q: Tensor, k: Tensor, v: Tensor, mask=None, **kwargs) -> None:
    """Skip the running test when ``impl`` declares it cannot run this call."""
    why = reasons(impl, q, k, v, mask, **kwargs)
    if why:
        pytest.skip(f"{impl}: " + "; ".join(why))


def close(got: Tensor, want: Tensor, kind: str = "out", msg: str = "") -> None:
    """``got`` equals ``want`` within the tolerance of ``got``'s dtype (``want`` may be wider)."""
    atol, rtol = TOL[got.dtype][kind]
    torch.testing.assert_close(got.to(want.dtype), want, atol=atol, rtol=rtol,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None, *,
                    scale: float | None = None, bias: Tensor | None = None, score_fn=None) -> Tensor:
    """Plain-torch attention: scores, modifier, mask, softmax, weighted values. GQA by repeating
    kv heads. A row with no allowed key gives zeros (attnkit's convention).

    Shapes: q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv), allowed bool broadcastable to
    (B, H, T, S), bias float broadcastable to (B, H, T, S); returns (B, H, T, Dv).
    """
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if bias is not None:
        s = s + bias
    if score_fn is not None:
        s = score_fn(s)
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    alive = s.amax(-1, keepdim=True) > -math.inf  # rows with at least one allowed key
    w = torch.softmax(torch.where(alive, s, 0.0), dim=-1) * alive
    return w @ v


def randn(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float64, scale: float = 1.0,
          grad: bool = False) -> Tensor:
    """A seeded normal tensor, drawn in float64 then cast (the same values in every dtype)."""
    t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return t.requires_grad_(grad)


def run_with_grads(fn, q: Tensor, k: Tensor, v: Tensor, seed: int = 7) -> tuple[Tensor, ...]:
    """``fn(q, k, v)`` and the gradients of ``sum(out * cotangent)`` for q, k, v."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (out * cot.to(out.dtype)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad
