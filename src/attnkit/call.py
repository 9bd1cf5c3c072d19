"""The validated call object: :class:`AttentionCall` bundles one attention problem as every
implementation receives it, :func:`make_call` checks the user's arguments and builds it, and
``call.scores()`` / ``call.weights()`` compute steps 2 and 3 with the reference math.

Input checks name the argument, what was received and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import scores as _scores
from . import weights as _weights
from .errors import AttnKitError, DTypeError, ShapeError
from .masks import BlockMask, Mask, as_mask
from .scores import Score, ScoreMod, apply_mods
from .shapes import index_grid, repeat_kv
from .weights import Weight

__all__ = ["AttentionCall", "make_call", "hide_masked_keys", "check_qkv", "check_mask", "check_bias", "check_dropout",
           "check_scale"]


@dataclass(frozen=True, eq=False)
class AttentionCall:
    """One validated attention problem, as every implementation receives it.

    Shapes: ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)``; ``H % Hkv == 0``
    (grouped-query attention: query head ``h`` reads kv head ``h // (H // Hkv)``).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Mask | None = None  # validated for these sizes; None = attend everywhere
    score: Score | None = None
    weight: Weight | None = None
    scale: float = 1.0  # already resolved (never None here)
    score_mods: tuple[ScoreMod, ...] = ()
    dropout_p: float = 0.0
    return_weights: bool = False
    return_lse: bool = False  # also return the per-row log-sum-exp (B, H, T)
    options: Mapping[str, Any] = field(default_factory=dict)  # implementation-specific options
    generator: torch.Generator | None = None  # for dropout / randomised implementations

    batch = property(lambda self: self.q.shape[0])
    heads = property(lambda self: self.q.shape[1])
    kv_heads = property(lambda self: self.k.shape[1])
    lq = property(lambda self: self.q.shape[2])
    lk = property(lambda self: self.k.shape[2])
    head_dim = property(lambda self: self.q.shape[3])
    v_dim = property(lambda self: self.v.shape[3])

    @property
    def requires_grad(self) -> bool:
        """Whether autograd will need a backward through this call."""
        return torch.is_grad_enabled() and any(t.requires_grad for t in (self.q, self.k, self.v))

    def describe(self) -> str:
        """Shapes and dtype, for error messages."""
        return (f"q {tuple(self.q.shape)}, k {tuple(self.k.shape)}, v {tuple(self.v.shape)}, "
                f"dtype {self.q.dtype}, device {self.q.device.type}")

    # -- steps 2 and 3 with the reference math -------------------------------------------------
    def index_grid(self, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Broadcast index tensors ``b (B,1,1,1)``, ``h (1,H,1,1)``, ``i (1,1,T,1)``, ``j (1,1,1,S)``."""
        return index_grid(self.batch, self.heads, 0, self.lq, 0, self.lk, self.q.device if device is None else device)

    def scores(self, q: Tensor | None = None, k: Tensor | None = None) -> Tensor:
        """Step 2: modified scores ``(B, H, T, S)`` (GQA heads expanded); ``q``/``k`` override
        the call's own (e.g. upcast copies)."""
        q = self.q if q is None else q
        k = repeat_kv(self.k if k is None else k, self.heads // self.kv_heads)
        if self.options.get("reorder_ops", False) and self.score.kind in ("dot", "scaled_dot"):
            s = self.score(q * self.scale, k, 1.0)  # scale q first (as fused kernels do)
        else:
            s = self.score(q, k, self.scale)  # (B, H, T, S)
        if self.score_mods:
            s = apply_mods(s, self.score_mods, *self.index_grid(s.device), self.lq, self.lk)
        return s

    def dense_mask(self, device: torch.device | None = None) -> Tensor | None:
        """The mask as a bool tensor ``(Bm, Hm, T, S)``, or None when every key is allowed."""
        if self.mask is None:
            return None
        return self.mask.dense4(self.lq, self.lk, device=self.q.device if device is None else device)

    def weights(self, s: Tensor | None = None) -> Tensor:
        """Step 3: the weights ``(B, H, T, S)`` over the allowed keys (no dropout)."""
        s = self.scores() if s is None else s
        return self.weight(s, self.dense_mask(s.device))


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv), same dtype and device, H % Hkv == 0.

    The common case (all well formed) costs one pass of cheap comparisons; the detailed checks, and
    their messages, run only when something is off."""
    if (type(q) is Tensor and type(k) is Tensor and type(v) is Tensor and q.dim() == k.dim() == v.dim() == 4
            and q.dtype in _FLOATS and q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        (bq, h, _, d), (bk, hkv, s, dk), (bv, hv, sv, _) = q.shape, k.shape, v.shape
        if bq == bk == bv and d == dk and d > 0 and hkv == hv and s == sv and s > 0 and hkv > 0 \
                and h > 0 and h % hkv == 0:
            return
    _check_qkv_in_detail(q, k, v)


def _check_qkv_in_detail(q: Tensor, k: Tensor, v: Tensor) -> None:
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
    if q.shape[1] == 0 or k.shape[1] == 0:
        raise ShapeError(f"q and k need at least one head (dim 1); got q {_shape(q)}, k {_shape(k)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ShapeError(f"query heads H={q.shape[1]} must be a multiple of key/value heads "
                         f"Hkv={k.shape[1]} (grouped-query attention); got q {_shape(q)}, k {_shape(k)}")
    if q.shape[3] == 0 or k.shape[2] == 0:
        raise ShapeError(f"head dim and key length must be non-zero; got q {_shape(q)}, k {_shape(k)}")


def check_mask(mask: Mask | BlockMask | Tensor | None, q: Tensor, k: Tensor) -> Mask | None:
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


ScoreArg = str | Score | Callable[..., Tensor]
WeightArg = str | Weight | Callable[..., Tensor]


def make_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask | BlockMask | Tensor | None = None,
    *,
    score: ScoreArg = "scaled_dot",
    weight: WeightArg = "softmax",
    scale: float | None = None,
    bias: Tensor | None = None,
    score_mods: Sequence[ScoreMod] = (),
    dropout_p: float = 0.0,
    return_weights: bool = False,
    return_lse: bool = False,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> AttentionCall:
    """Validate the arguments of :func:`attention` and bundle them as an :class:`AttentionCall`.

    Keys that a key-side mask (padding, key mask) hides from every query are zeroed in ``k`` and
    ``v`` here, once for every implementation, so non-finite values there cannot leak.
    """
    check_qkv(q, k, v)
    m = check_mask(mask, q, k)
    check_scale(scale)
    check_dropout(dropout_p)
    sc = _scores.resolve(score)
    wt = _weights.resolve(weight)
    if isinstance(score_mods, ScoreMod):
        raise AttnKitError(f"score_mods must be a list of attnkit.scores.ScoreMod objects; got one {score_mods!r} "
                           f"(write score_mods=[{score_mods.name}(...)])")
    if not isinstance(score_mods, (list, tuple)):
        raise AttnKitError(f"score_mods must be a list of attnkit.scores.ScoreMod objects; got "
                           f"{type(score_mods).__name__}")
    mods = tuple(score_mods)
    for mod in mods:
        if not isinstance(mod, ScoreMod):
            raise AttnKitError(f"score_mods must hold attnkit.scores.ScoreMod objects; got {type(mod).__name__}")
        mod.validate(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if bias is not None:
        check_bias(bias, q, k)
        mods = (_scores.bias(bias), *mods)
    if options is not None and not isinstance(options, Mapping):
        raise AttnKitError(f"options must be a mapping of option name to value; got {type(options).__name__}")
    for name, flag in (("return_weights", return_weights), ("return_lse", return_lse)):
        if not isinstance(flag, bool):
            raise AttnKitError(f"{name} must be True or False; got {flag!r}")
    if return_lse and not wt.is_builtin("softmax"):
        raise AttnKitError(f"return_lse=True needs weight='softmax' (the log-sum-exp normalises softmax); "
                           f"got weight {wt.name!r}")
    if m is not None:
        k, v = hide_masked_keys(m, k, v)
    return AttentionCall(
        q=q, k=k, v=v, mask=m, score=sc, weight=wt,
        scale=float(sc.default_scale(q.shape[-1]) if scale is None else scale),
        score_mods=mods, dropout_p=float(dropout_p), return_weights=return_weights, return_lse=return_lse,
        options=dict(options or {}), generator=generator,
    )


def hide_masked_keys(mask: Mask, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the keys and values that ``mask`` hides from every query (key-side masks)."""
    keep = mask.key_keep(k.shape[2], device=k.device)  # (Bm, S)
    if keep is None or (not torch.compiler.is_compiling() and bool(keep.all())):
        return k, v
    keep = keep.view(keep.shape[0], 1, keep.shape[1], 1)  # (Bm, 1, S, 1)
    zero = torch.zeros((), dtype=k.dtype, device=k.device)
    return torch.where(keep, k, zero), torch.where(keep, v, zero)
