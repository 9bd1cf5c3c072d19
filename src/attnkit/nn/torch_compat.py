"""The ``torch.nn.MultiheadAttention`` edge of :class:`~attnkit.nn.MultiHeadAttention`.

Everything that exists only so that PyTorch code and checkpoints run unchanged lives here; the
core module (:mod:`attnkit.nn.attention`) speaks attnkit's conventions only:

* masks: PyTorch's ``attn_mask`` (bool True = *not allowed*, or float added to the scores,
  ``(T, S)`` or ``(B * H, T, S)``) and ``key_padding_mask`` (``(B, S)``, bool True = *ignore*,
  or float) -> an attnkit :class:`~attnkit.masks.Mask` (True = attend) and a float bias;
* layout: ``batch_first=False`` inputs ``(T, B, E)`` and unbatched ``(T, E)`` inputs <-> ``(B, T, E)``;
* checkpoints: ``in_proj_weight`` / ``in_proj_bias`` (or ``q_proj_weight``, ``k_proj_weight``,
  ``v_proj_weight`` when kdim/vdim differ) and ``out_proj.*`` -> ``q_proj``, ``k_proj``,
  ``v_proj``, ``o_proj``;
* ``add_bias_kv`` / ``add_zero_attn``: a learned and a zero key/value appended after the keys;
* ``need_weights``: PyTorch's default (True) asks for weights that some implementations cannot
  return; the refusal says so.

Shape legend: B batch, T queries, S keys, E embed dim, H heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import masks as _masks
from ..errors import AttnKitError, DTypeError, ShapeError, UnsupportedError
from ..masks import Mask
from ..registry import get_impl

__all__ = [
    "torch_masks_to_attnkit", "AppendedKeys", "append_extra_keys", "convert_torch_state", "to_batch_first",
    "from_batch_first", "check_need_weights", "warn_if_mask_inverted", "warn_layout_after_torch_load",
    "torch_mha_options",
]


# ----------------------------------------------------------------------------------------------
# masks: PyTorch conventions -> attnkit (True = attend, float bias)
# ----------------------------------------------------------------------------------------------


def _split_float(t: Tensor) -> tuple[Tensor | None, Tensor]:
    """A float additive mask -> (bool allowed or None when all finite, bias with -inf zeroed)."""
    allowed = t != float("-inf")
    if bool(allowed.all()):
        return None, t
    return allowed, t.masked_fill(~allowed, 0.0)


def _attn_mask_4d(attn_mask: Tensor, batch: int, heads: int, lq: int, lk: int) -> Tensor:
    """PyTorch's ``attn_mask`` (T, S) or (B * H, T, S) -> broadcastable (1|B, 1|H, T, S)."""
    if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (lq, lk):
        return attn_mask.view(1, 1, lq, lk)
    if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (batch * heads, lq, lk):
        return attn_mask.view(batch, heads, lq, lk)
    raise ShapeError(f"attn_mask must have shape (T, S) = ({lq}, {lk}) or (B * num_heads, T, S) = "
                     f"({batch * heads}, {lq}, {lk}); got {tuple(attn_mask.shape)}")


def torch_masks_to_attnkit(attn_mask: Tensor | Mask | None, key_padding_mask: Tensor | None, *,
                           batch: int, heads: int, lq: int, lk: int, is_causal: bool = False,
                           dtype: torch.dtype = torch.float32) -> tuple[Mask | None, Tensor | None]:
    """Convert ``nn.MultiheadAttention``'s mask arguments to an attnkit mask and a float bias.

    ``attn_mask``: bool (True = not allowed) or float (added), ``(T, S)`` or ``(B * H, T, S)``, or
    an attnkit Mask (True = attend). ``key_padding_mask``: ``(B, S)`` bool (True = ignore) or
    float (added). ``is_causal`` without an ``attn_mask`` adds a causal mask (with one, the
    ``attn_mask`` is taken to be that causal mask, as PyTorch does). Returns ``(mask, bias)``
    where bias is ``(1|B, 1|H, T, S)``; ``-inf`` entries of float masks become mask entries, so
    fully masked rows give zeros rather than NaN.

    Example (a bool ``attn_mask`` is True where attention is *not* allowed)::

        >>> import torch
        >>> m, bias = torch_masks_to_attnkit(torch.ones(2, 2, dtype=torch.bool).triu(1), None,
        ...                                  batch=1, heads=1, lq=2, lk=2)
        >>> m.dense(2, 2).int().tolist(), bias
        ([[1, 0], [1, 1]], None)
    """
    parts: list[Mask] = []
    bias: Tensor | None = None

    def add_float(t4: Tensor) -> None:
        nonlocal bias
        allowed, b = _split_float(t4)
        if allowed is not None:
            parts.append(_masks.from_tensor(allowed))
        bias = b if bias is None else bias + b

    if isinstance(attn_mask, Mask):
        parts.append(attn_mask)
    elif attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise DTypeError(f"attn_mask must be a Tensor or an attnkit Mask; got {type(attn_mask).__name__}")
        m4 = _attn_mask_4d(attn_mask, batch, heads, lq, lk)
        if m4.dtype == torch.bool:
            parts.append(_masks.from_tensor(~m4))
        elif m4.is_floating_point():
            add_float(m4.to(dtype))
        else:
            raise DTypeError(f"attn_mask must be bool (True = not allowed) or float (additive); got {m4.dtype}")
    elif is_causal:
        parts.append(_masks.causal())
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or tuple(key_padding_mask.shape) != (batch, lk):
            got = tuple(key_padding_mask.shape) if isinstance(key_padding_mask, Tensor) else type(key_padding_mask)
            raise ShapeError(f"key_padding_mask must have shape (B, S) = ({batch}, {lk}); got {got}")
        if key_padding_mask.dtype == torch.bool:
            parts.append(_masks.from_key_padding(key_padding_mask, true_means="ignore"))
        elif key_padding_mask.is_floating_point():
            add_float(key_padding_mask.to(dtype).view(batch, 1, 1, lk))
        else:
            raise DTypeError(f"key_padding_mask must be bool (True = ignore) or float (additive); got "
                             f"{key_padding_mask.dtype}")
    mask = functools.reduce(lambda a, b: a & b, parts) if parts else None
    return mask, bias


def warn_if_mask_inverted(attn_mask: Tensor | Mask | None) -> None:
    """Warn when a bool ``attn_mask`` (PyTorch's convention: True = *not allowed*) leaves a query
    with no allowed key. PyTorch would return NaN for that row, attnkit returns zeros, so the
    usual cause, a mask written attnkit's way (True = attend, e.g. ``tril``) and passed as
    ``attn_mask``, would otherwise go unnoticed."""
    if not isinstance(attn_mask, Tensor) or attn_mask.dtype != torch.bool or attn_mask.numel() == 0:
        return
    if bool(attn_mask.all(dim=-1).any()):
        warnings.warn("attn_mask is a bool mask in PyTorch's convention (True = NOT allowed) and it leaves some "
                      "query with no allowed key: that row's output is zero (PyTorch gives NaN). If the mask "
                      "marks the allowed positions with True (attnkit's convention), pass it as mask= instead",
                      UserWarning, stacklevel=_user_stacklevel())


# ----------------------------------------------------------------------------------------------
# add_bias_kv / add_zero_attn
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AppendedKeys(Mask):
    """``inner`` over the first ``S - extra`` keys; the last ``extra`` keys (the learned ``bias_k``
    and the zero key of ``add_zero_attn``, appended after the inputs' keys as PyTorch does) are
    attended by every query. Evaluating ``inner`` at the inputs' own length keeps its alignment
    (e.g. a bottom-right causal mask) unchanged."""

    inner: Mask
    extra: int

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.inner.num_batch

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.inner.num_heads

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        self.inner.validate(lq, lk - self.extra, batch, heads)

    def mod(self, b, h, i, j, lq, lk):
        s = lk - self.extra
        return (j >= s) | self.inner.mod(b, h, i, j.clamp(max=s - 1), lq, s)


def append_extra_keys(k: Tensor, v: Tensor, bias_k: Tensor | None, bias_v: Tensor | None, zero_attn: bool,
                      mask: Mask | None, bias: Tensor | None) -> tuple[Tensor, Tensor, Mask | None, Tensor | None]:
    """``add_bias_kv`` / ``add_zero_attn``: projected keys/values ``(B, S, Hkv * D)`` ->
    ``(B, S + n, Hkv * D)`` with the learned ``bias_k``/``bias_v`` ``(1, 1, Hkv * D)`` and/or a zero
    key/value appended, and the mask and bias widened so that every query may attend to them."""
    b, ks, vs = k.shape[0], [k], [v]
    if bias_k is not None and bias_v is not None:
        ks.append(bias_k.expand(b, 1, -1))
        vs.append(bias_v.expand(b, 1, -1))
    if zero_attn:
        ks.append(k.new_zeros(b, 1, k.shape[2]))
        vs.append(v.new_zeros(b, 1, v.shape[2]))
    extra = len(ks) - 1
    if not extra:
        return k, v, mask, bias
    mask = None if mask is None else AppendedKeys(mask, extra)
    bias = None if bias is None else torch.nn.functional.pad(bias, (0, extra))
    return torch.cat(ks, dim=1), torch.cat(vs, dim=1), mask, bias


# ----------------------------------------------------------------------------------------------
# layout: (T, B, E) and unbatched (T, E) <-> (B, T, E)
# ----------------------------------------------------------------------------------------------


def to_batch_first(x: Any, name: str, dim: int, batch_first: bool) -> tuple[Tensor, bool]:
    """An input ``(B, L, dim)``, ``(L, B, dim)`` (``batch_first=False``) or unbatched ``(L, dim)``
    -> ``(B, L, dim)``; also whether it was unbatched."""
    if not isinstance(x, Tensor):
        raise DTypeError(f"{name} must be a Tensor; got {type(x).__name__}")
    if x.dim() == 2:
        x, unbatched = x.unsqueeze(0), True
    elif x.dim() == 3:
        x, unbatched = (x if batch_first else x.transpose(0, 1)), False
    else:
        raise ShapeError(f"{name} must be 3-D ({'B, L' if batch_first else 'L, B'}, {dim}) or "
                         f"unbatched (L, {dim}); got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ShapeError(f"{name} last dim must be {dim}; got shape {tuple(x.shape)}")
    return x, unbatched


def from_batch_first(out: Tensor, weights: Tensor | None, batch_first: bool,
                     unbatched: bool) -> tuple[Tensor, Tensor | None]:
    """``out (B, T, E)`` back to the caller's layout; weights lose the batch dim when unbatched."""
    if unbatched:
        return out[0], (None if weights is None else weights[0])
    return (out if batch_first else out.transpose(0, 1)), weights


# ----------------------------------------------------------------------------------------------
# need_weights
# ----------------------------------------------------------------------------------------------


def check_need_weights(need_weights: bool, impl: str) -> None:
    """PyTorch's ``need_weights`` defaults to True; refuse it up front, naming the fix, when the
    pinned implementation cannot return weights."""
    if need_weights and impl != "auto" and not get_impl(impl).returns_weights:
        raise UnsupportedError(f"need_weights=True (the default) asks for weights, which impl {impl!r} cannot "
                               "return; pass need_weights=False")


# ----------------------------------------------------------------------------------------------
# checkpoints of nn.MultiheadAttention
# ----------------------------------------------------------------------------------------------


def convert_torch_state(state: dict[str, Any], prefix: str, *, num_heads: int, num_kv_heads: int,
                        has_bias_kv: bool) -> bool:
    """Rewrite ``nn.MultiheadAttention`` keys under ``prefix`` to ``q_proj``, ``k_proj``,
    ``v_proj``, ``o_proj`` keys, in place. Returns whether there were any."""
    p = prefix
    if p + "in_proj_weight" in state:
        qw, kw, vw = state.pop(p + "in_proj_weight").chunk(3, dim=0)
    elif p + "q_proj_weight" in state:
        qw, kw, vw = (state.pop(p + f"{n}_proj_weight") for n in "qkv")
    else:
        return False
    if num_kv_heads != num_heads:
        raise ShapeError(f"an nn.MultiheadAttention state dict has num_kv_heads == num_heads; this module has "
                         f"num_heads={num_heads}, num_kv_heads={num_kv_heads}")
    for name in ("bias_k", "bias_v"):
        if p + name in state and not has_bias_kv:
            raise AttnKitError(f"the state dict has {p + name} (nn.MultiheadAttention with add_bias_kv=True); "
                               "build this module with add_bias_kv=True to load it")
    state[p + "q_proj.weight"], state[p + "k_proj.weight"], state[p + "v_proj.weight"] = qw, kw, vw
    if p + "in_proj_bias" in state:
        qb, kb, vb = state.pop(p + "in_proj_bias").chunk(3, dim=0)
        state[p + "q_proj.bias"], state[p + "k_proj.bias"], state[p + "v_proj.bias"] = qb, kb, vb
    for suffix in ("weight", "bias"):
        if p + f"out_proj.{suffix}" in state:
            state[p + f"o_proj.{suffix}"] = state.pop(p + f"out_proj.{suffix}")
    return True


def warn_layout_after_torch_load() -> None:
    """The warning for a PyTorch checkpoint loaded into a module whose layout was not stated (one
    text for every module of a model, so the default filter shows it once per call site)."""
    warnings.warn("loaded nn.MultiheadAttention weights into an attnkit module built without "
                  "batch_first: attnkit takes (B, T, E) inputs by default, PyTorch's modules default to "
                  "(T, B, E). Pass batch_first=False to feed (T, B, E) tensors, or batch_first=True to keep "
                  "(B, T, E); stating it silences this warning", UserWarning, stacklevel=_user_stacklevel())


def torch_mha_options(mha: nn.MultiheadAttention) -> dict[str, Any]:
    """Constructor arguments of :class:`~attnkit.nn.MultiHeadAttention` that rebuild ``mha``."""
    if not isinstance(mha, nn.MultiheadAttention):
        raise AttnKitError(f"from_torch expects an nn.MultiheadAttention; got {type(mha).__name__}")
    ref = mha.in_proj_weight if mha.in_proj_weight is not None else mha.q_proj_weight
    return dict(embed_dim=mha.embed_dim, num_heads=mha.num_heads, dropout=mha.dropout,
                bias=mha.in_proj_bias is not None, kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first,
                add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn, device=ref.device,
                dtype=ref.dtype)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

_INTERNAL_DIRS = (os.path.dirname(torch.__file__) + os.sep,  # torch's module machinery
                  os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)  # attnkit


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside torch and attnkit
    (the user's ``load_state_dict`` or forward call), however deep the module nesting."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level
