"""Input checks with messages that name the argument, what was received and what was expected."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import AttnKitError, DTypeError, ShapeError
from .masks import Mask, as_mask

__all__ = ["check_qkv", "check_mask", "check_dropout", "check_scale"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv), same dtype and device, H % Hkv == 0."""
    for name, t, dims in (("q", q, "(B, H, T, D)"), ("k", k, "(B, Hkv, S, D)"), ("v", v, "(B, Hkv, S, Dv)")):
        if not isinstance(t, Tensor):
            raise DTypeError(f"{name} must be a torch.Tensor {dims}; got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{name} must be a 4-D tensor {dims}; got shape {_shape(t)} ({t.dim()}-D)")
        if t.dtype not in _FLOATS:
            raise DTypeError(f"{name} must be a floating tensor (float16, bfloat16, float32, float64); "
                             f"got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise DTypeError(f"q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise DTypeError(f"q, k, v must be on one device; got q {q.device}, k {k.device}, v {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ShapeError(f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}; "
                         "expected the same B in dim 0")
    if q.shape[3] != k.shape[3]:
        raise ShapeError(f"head dim of q and k differ: q {_shape(q)} has D={q.shape[3]}, k {_shape(k)} "
                         f"has D={k.shape[3]}; expected equal")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ShapeError(f"k {_shape(k)} and v {_shape(v)} must agree on heads and length (dims 1, 2)")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ShapeError(f"query heads H={q.shape[1]} must be a multiple of key/value heads "
                         f"Hkv={k.shape[1]} (grouped-query attention); got q {_shape(q)}, k {_shape(k)}")
    if q.shape[3] == 0 or k.shape[2] == 0:
        raise ShapeError(f"head dim and key length must be non-zero; got q {_shape(q)}, k {_shape(k)}")


def check_mask(mask: Mask | Tensor | None, q: Tensor, k: Tensor) -> Mask | None:
    """Normalise ``mask`` to a :class:`Mask` and check it fits (B, H, T, S)."""
    m = as_mask(mask)
    if m is not None:
        if isinstance(mask, Tensor) and mask.device != q.device:
            raise DTypeError(f"mask is on {mask.device} but q is on {q.device}; expected one device")
        m.validate(q.shape[2], k.shape[2], q.shape[0], q.shape[1])
    return m


def check_bias(bias: Tensor, q: Tensor, k: Tensor) -> None:
    """A float bias broadcastable to (B, H, T, S)."""
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        got = bias.dtype if isinstance(bias, Tensor) else type(bias).__name__
        raise DTypeError(f"bias must be a floating tensor broadcastable to (B, H, T, S) = {target}; got {got}")
    shape = (1,) * (4 - bias.dim()) + _shape(bias) if bias.dim() <= 4 else _shape(bias)
    if len(shape) != 4 or any(s not in (1, t) for s, t in zip(shape, target)):
        raise ShapeError(f"bias has shape {_shape(bias)}; expected a shape broadcastable to (B, H, T, S) = {target}")
    if bias.device != q.device:
        raise DTypeError(f"bias is on {bias.device} but q is on {q.device}; expected one device")


def check_dropout(dropout_p: float) -> None:
    """0 <= dropout_p < 1."""
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise AttnKitError(f"dropout_p must be a float in [0, 1); got {dropout_p!r}")


def check_scale(scale: float | None) -> None:
    """None or a finite number."""
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale)):
        raise AttnKitError(f"scale must be None or a finite float; got {scale!r}")
