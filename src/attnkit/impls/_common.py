"""Pieces every implementation shares: options declared as data and read in one way, the
prepared queries and keys of a call (normalised for cosine), the dtype scores are computed in,
how sdpa passes a mask and whether it can run a call (fused or at all), the test of whether a
score modifier holds a learned tensor, and (re-exported from :mod:`attnkit.shapes`) the index
grid of a tile for score modifiers and masks.

Shape legend: B batch, H query heads, T queries, S keys, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from ..errors import AttnKitError
from ..kernels.tiles import KernelMod, kernel_dtype, tile_attention
from ..masks import Causal
from ..registry import AttnResult, get_impl, list_impls, not_supported_reasons
from ..scores import ScoreMod
from ..shapes import index_grid

__all__ = ["Option", "read_options", "prepared_qk", "sdpa_mask_kind", "sdpa_runs_fused", "sdpa_can_run",
           "holds_grad_tensor", "compute_dtype", "index_grid"]


@dataclass(frozen=True)
class Option:
    """One option an implementation accepts in ``attention(..., options={...})``.

    ``kind`` is the accepted type (``int`` excludes ``bool``); ``minimum`` bounds numbers from below;
    ``choices`` lists the accepted values; ``check`` returns why a value is refused, or None.
    """

    kind: type | tuple[type, ...]
    default: Any
    doc: str
    minimum: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    def parse(self, impl: str, name: str, value: Any) -> Any:
        """``value`` checked against the declaration; raises :class:`AttnKitError` naming the option."""
        if value is None and self.default is None:
            return None
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise AttnKitError(f"{impl} option {name!r} must be {names} ({self.doc}); got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise AttnKitError(f"{impl} option {name!r} must be >= {self.minimum} ({self.doc}); got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise AttnKitError(f"{impl} option {name!r} must be one of {list(self.choices)}; got {value!r}")
        if self.check is not None and (why := self.check(value)):
            raise AttnKitError(f"{impl} option {name!r}: {why}; got {value!r}")
        return value


def read_options(call: AttentionCall, impl: str, declared: Mapping[str, Option]) -> dict[str, Any]:
    """Every declared option of ``impl``: the call's value, checked, or the default. Unknown names
    never get here (dispatch refuses them with the list of accepted ones)."""
    return {name: opt.parse(impl, name, call.options[name]) if name in call.options else opt.default
            for name, opt in declared.items()}


def prepared_qk(call: AttentionCall, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, float]:
    """``(q, k, scale)`` ready for a dot product, in ``dtype`` when given (cast first): for cosine
    scores both are normalised and the temperature is folded into the scale.
    ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``."""
    q, k, scale = call.q, call.k, call.scale
    if dtype is not None:
        q, k = q.to(dtype), k.to(dtype)
    if call.score.kind == "cosine":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = scale / call.score.params["temperature"]
    return q, k, scale


def on_kernel(call: AttentionCall, block_q: int, block_k: int, mods: list[KernelMod]) -> AttnResult:
    """``call`` (softmax, no weights returned) on the native kernel over the tile plan of its mask:
    q, k, v in the kernel's dtype (:func:`attnkit.kernels.tiles.kernel_dtype`), ``mods`` (built-in
    score modifiers in the kernel's form) computed inside the tiles; the output in ``q``'s dtype."""
    inputs = kernel_dtype(call.q.dtype)
    q, k, scale = prepared_qk(call, compute_dtype(call.q.dtype))
    out, lse = tile_attention(q.to(inputs), k.to(inputs), call.v.to(inputs), call.mask, scale, block_q, block_k,
                              mods=mods)
    return AttnResult(out.to(call.q.dtype), None, lse if call.return_lse else None)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores and sums are computed and accumulated in: float64 for float64 inputs,
    float32 for everything else (half inputs are upcast: a float16 ``q k^T`` overflows)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sdpa_mask_kind(call: AttentionCall) -> str:
    """How ``impl="sdpa"`` passes the call's mask: ``"none"`` (every key allowed, including a
    bottom-right causal mask over one query, which sees every key), ``"causal"`` (its own
    ``is_causal``: ``lq == lk`` or top-left alignment) or ``"dense"`` (a materialised bool mask)."""
    m = call.mask
    if m is None:
        return "none"
    if isinstance(m, Causal):
        if m.align == "bottom_right" and call.lq == 1:
            return "none"
        if call.lq == call.lk or m.align == "top_left":
            return "causal"
    return "dense"


def sdpa_runs_fused(call: AttentionCall) -> bool:
    """Whether ``impl="sdpa"`` runs ``call`` with its fused kernel and no dense mask or bias
    buffer: softmax weights, no score modifiers, no weights returned, and a mask that
    :func:`sdpa_mask_kind` passes without materialising it; and sdpa supports the call at all (it
    cannot return the log-sum-exp, for one)."""
    if call.score_mods or not call.weight.is_builtin("softmax") or call.return_weights:
        return False
    return sdpa_mask_kind(call) != "dense" and sdpa_can_run(call)


def sdpa_can_run(call: AttentionCall) -> bool:
    """Whether ``impl="sdpa"`` is registered and declares every capability ``call`` needs (read
    from its :class:`~attnkit.registry.ImplSpec`, so the answer follows sdpa's own declaration)."""
    return "sdpa" in list_impls() and not not_supported_reasons(get_impl("sdpa"), call)


def holds_grad_tensor(mods: tuple[ScoreMod, ...]) -> bool:
    """Whether a score modifier's function closes over a tensor that requires grad (a learned
    bias, say): implementations that differentiate ``q``, ``k``, ``v`` only must decline it."""
    for mod in mods:
        for cell in getattr(mod.fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, Tensor) and value.requires_grad:
                return True
    return False
