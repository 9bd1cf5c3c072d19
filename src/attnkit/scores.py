"""Step 2 of attention: **score** every query-key pair, then optionally modify the scores.

A score function maps ``q (B, H, T, D)`` and ``k (B, H, S, D)`` to scores ``(B, H, T, S)``; the
final score is ``score(q, k) * scale``. Parameter-free scores are chosen by name
(``"dot"``, ``"scaled_dot"``, ``"cosine"``); scores with learned parameters are built by a factory
that takes the parameters (``general(weight)``, ``additive(w_q, w_k, v)``), so the functional
core never owns parameters; modules hold them and pass the score in.

Score modifiers (``ScoreMod``) act on the score matrix as plain functions
``mod(s, b, h, i, j, lq, lk) -> s`` over broadcast index tensors (FlexAttention's ``score_mod``
plus the two lengths, so position-dependent mods can align queries to keys): an
additive ``bias`` tensor, ``alibi(slopes)`` and tanh ``softcap(cap)``. Block-wise
implementations call them on one tile at a time with that tile's indices.

Shape legend: B batch, H heads, T queries, S keys, D head dim.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .errors import AttnKitError, DTypeError, ShapeError, unknown_name
from .shapes import as_4d, index_broadcast

__all__ = [
    "ScoreFn",
    "Score",
    "ScoreMod",
    "dot",
    "scaled_dot",
    "cosine",
    "general",
    "additive",
    "bias",
    "alibi",
    "alibi_slopes",
    "softcap",
    "score_mod",
    "resolve",
    "names",
    "apply_mods",
]


class ScoreFn(Protocol):
    """``fn(q, k, **params) -> (B, H, T, S)`` raw scores (before ``scale``)."""

    def __call__(self, q: Tensor, k: Tensor, /, **params: Tensor | float) -> Tensor: ...


# ----------------------------------------------------------------------------------------------
# raw score functions
# ----------------------------------------------------------------------------------------------


def _dot(q: Tensor, k: Tensor) -> Tensor:
    """``q k^T``: (B, H, T, D) x (B, H, S, D) -> (B, H, T, S)."""
    return q @ k.transpose(-2, -1)


def _cosine(q: Tensor, k: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Cosine similarity of q and k divided by ``temperature``."""
    qn = torch.nn.functional.normalize(q, dim=-1)
    kn = torch.nn.functional.normalize(k, dim=-1)
    return (qn @ kn.transpose(-2, -1)) / temperature


def _general(q: Tensor, k: Tensor, *, weight: Tensor) -> Tensor:
    """Bilinear (Luong "general"): ``q W k^T`` with ``W`` of shape (D, D) or (H, D, D)."""
    qw = torch.einsum("bhtd,hde->bhte", q, weight) if weight.dim() == 3 else q @ weight
    return qw @ k.transpose(-2, -1)


def _additive(q: Tensor, k: Tensor, *, w_q: Tensor, w_k: Tensor, v: Tensor) -> Tensor:
    """Additive (Bahdanau): ``v^T tanh(W_q q_i + W_k k_j)``; W_q (A, D), W_k (A, D), v (A,)."""
    qa = q @ w_q.transpose(-2, -1)  # (B, H, T, A)
    ka = k @ w_k.transpose(-2, -1)  # (B, H, S, A)
    return torch.tanh(qa.unsqueeze(-2) + ka.unsqueeze(-3)) @ v  # (B, H, T, S)


@dataclass(frozen=True, eq=False)
class Score:
    """A named score function with its parameters. ``Score(q, k, scale)`` -> (B, H, T, S).

    ``scaled`` says whether the default scale is ``1 / sqrt(D)`` (True only for scaled_dot).
    """

    name: str
    fn: ScoreFn
    params: dict = field(default_factory=dict)
    scaled: bool = False
    builtin: bool = False  # attnkit's own function: dispatch knows built-ins by identity, not by name

    @property
    def kind(self) -> str:
        """The built-in name, or ``"custom"`` for a user's function (what implementations declare)."""
        return self.name if self.builtin else "custom"

    def default_scale(self, head_dim: int) -> float:
        """The scale used when the caller passes ``scale=None``."""
        return 1.0 / math.sqrt(head_dim) if self.scaled else 1.0

    def __call__(self, q: Tensor, k: Tensor, scale: float) -> Tensor:
        s = self.fn(q, k, **self.params)
        if scale == 1.0:
            return s
        # the built-in scores return a fresh matmul/division result that their backward does not
        # read, so scaling it in place is safe for autograd and saves a (B, H, T, S) pass
        return s.mul_(scale) if self.fn in _FRESH_RESULT else s * scale

    def __repr__(self) -> str:
        return f"Score({self.name!r})"


def dot() -> Score:
    """Plain dot product ``q . k`` (default scale 1)."""
    return Score("dot", _dot, builtin=True)


def scaled_dot() -> Score:
    """Scaled dot product ``q . k / sqrt(D)`` (Vaswani et al. 2017)."""
    return Score("scaled_dot", _dot, scaled=True, builtin=True)


def _positive(what: str, value: object) -> float:
    """``value`` as a finite float > 0 (not a bool); else :class:`AttnKitError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise AttnKitError(f"{what} must be a finite number > 0; got {value!r}")
    return float(value)


def cosine(temperature: float = 1.0) -> Score:
    """Cosine similarity divided by ``temperature`` (a finite number > 0), as in Swin v2 /
    cosine attention."""
    return Score("cosine", _cosine, {"temperature": _positive("cosine temperature", temperature)}, builtin=True)


def general(weight: Tensor) -> Score:
    """Bilinear score ``q W k^T`` (Luong et al. 2015 "general"); ``weight`` (D, D) or (H, D, D)."""
    if not isinstance(weight, Tensor) or weight.dim() not in (2, 3):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ShapeError(f"general score weight must be (D, D) or (H, D, D); got {got}")
    return Score("general", _general, {"weight": weight}, builtin=True)


def additive(w_q: Tensor, w_k: Tensor, v: Tensor) -> Score:
    """Additive score ``v^T tanh(W_q q + W_k k)`` (Bahdanau et al. 2015);
    ``w_q`` (A, D), ``w_k`` (A, D), ``v`` (A,)."""
    if w_q.dim() != 2 or w_k.dim() != 2 or v.dim() != 1 or not (w_q.shape[0] == w_k.shape[0] == v.shape[0]):
        raise ShapeError(f"additive score needs w_q (A, D), w_k (A, D), v (A,); got "
                         f"{tuple(w_q.shape)}, {tuple(w_k.shape)}, {tuple(v.shape)}")
    return Score("additive", _additive, {"w_q": w_q, "w_k": w_k, "v": v}, builtin=True)


_FRESH_RESULT = (_dot, _cosine, _general, _additive)
_NAMED: dict[str, Callable[[], Score]] = {"dot": dot, "scaled_dot": scaled_dot, "cosine": cosine}
_NEEDS_PARAMS = {"general": "attnkit.scores.general(weight)",
                 "additive": "attnkit.scores.additive(w_q, w_k, v)"}


_BUILT: dict[str, Score] = {"dot": dot(), "scaled_dot": scaled_dot(), "cosine": cosine()}


def names() -> list[str]:
    """Every score name (those with learned parameters need their factory)."""
    return sorted([*_NAMED, *_NEEDS_PARAMS])


def resolve(score: str | Score | Callable[..., Tensor]) -> Score:
    """Turn a name, a :class:`Score` or a plain callable ``fn(q, k) -> scores`` into a Score."""
    if isinstance(score, Score):
        return score
    if isinstance(score, str):
        if score in _BUILT:  # parameter-free built-ins are immutable: one shared instance each
            return _BUILT[score]
        if score in _NAMED:
            return _NAMED[score]()
        if score in _NEEDS_PARAMS:
            raise AttnKitError(f"score {score!r} has learned parameters; pass score={_NEEDS_PARAMS[score]}")
        raise unknown_name("score", score, names())
    if callable(score):
        return Score(getattr(score, "__name__", "custom"), score)
    raise AttnKitError(f"score must be a name, an attnkit.scores.Score or a callable; got {type(score).__name__}")


# ----------------------------------------------------------------------------------------------
# score modifiers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScoreMod:
    """A function of the score matrix and its indices: ``mod(s, b, h, i, j, lq, lk) -> s``.

    ``additive=True`` promises ``mod(s) - s`` does not depend on ``s`` (a bias), which lets
    implementations that only accept a bias tensor (SDPA) materialise it with :meth:`as_bias`.
    ``check(batch, heads, lq, lk)``, when given, returns why the modifier cannot apply to a
    problem of those sizes (or None); :meth:`validate` raises it. ``builtin`` marks attnkit's own
    :func:`bias`, :func:`alibi` and :func:`softcap`, whose ``params`` a kernel may compute natively
    (set by those constructors; a user's function, whatever its name, is never taken for one).
    """

    name: str
    fn: Callable[..., Tensor]
    additive: bool = False
    check: Callable[[int, int, int, int], str | None] | None = None
    params: dict = field(default_factory=dict)
    builtin: bool = False

    def validate(self, batch: int, heads: int, lq: int, lk: int) -> None:
        """Raise :class:`ShapeError` if the modifier cannot apply to scores ``(batch, heads, lq, lk)``."""
        why = None if self.check is None else self.check(batch, heads, lq, lk)
        if why:
            raise ShapeError(f"score modifier {self.name!r}: {why}")

    def __call__(self, s: Tensor, b: Tensor, h: Tensor, i: Tensor, j: Tensor, lq: int, lk: int) -> Tensor:
        return self.fn(s, b, h, i, j, lq, lk)

    def as_bias(self, batch: int, heads: int, lq: int, lk: int, *, dtype: torch.dtype,
                device: torch.device) -> Tensor:
        """The bias this modifier adds, ``(B|1, H|1, lq, lk)``; only for ``additive`` mods."""
        if not self.additive:
            raise AttnKitError(f"score modifier {self.name!r} is not additive; it has no bias form")
        b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
        h = torch.arange(heads, device=device).view(1, -1, 1, 1)
        i = torch.arange(lq, device=device).view(1, 1, -1, 1)
        j = torch.arange(lk, device=device).view(1, 1, 1, -1)
        return self.fn(torch.zeros((), dtype=dtype, device=device), b, h, i, j, lq, lk)

    def __repr__(self) -> str:
        return f"ScoreMod({self.name!r})"


def bias(tensor: Tensor) -> ScoreMod:
    """Add a float bias broadcastable to ``(B, H, T, S)`` (relative-position bias, T5, ...):
    1-D ``(S,)`` to 4-D, missing leading dims taken as 1, as in PyTorch broadcasting."""
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        got = tensor.dtype if isinstance(tensor, Tensor) else type(tensor).__name__
        raise DTypeError(f"bias must be a floating-point tensor broadcastable to (B, H, T, S); got {got}")
    if not 1 <= tensor.dim() <= 4:
        raise ShapeError(f"bias must be 1-D to 4-D, broadcastable to (B, H, T, S); got shape "
                         f"{tuple(tensor.shape)}")
    t4 = as_4d(tensor)  # (B|1, H|1, T|1, S|1)

    def fn(s, b, h, i, j, lq, lk):
        return s + index_broadcast(t4, b, h, i, j).to(s.dtype)

    def check(batch, heads, lq, lk):
        target = (batch, heads, lq, lk)
        if any(n not in (1, want) for n, want in zip(t4.shape, target)):
            return f"bias of shape {tuple(tensor.shape)} is not broadcastable to (B, H, T, S) = {target}"
        return None

    return ScoreMod("bias", fn, additive=True, check=check, params={"tensor": t4}, builtin=True)


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): the geometric sequence ``2^(-8 k / n)``, k = 1..n,
    for n a power of two; otherwise the n' = 2^floor(log2 n) slopes followed by every other
    slope of the 2n' sequence."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise AttnKitError(f"num_heads must be an int >= 1; got {num_heads!r}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (k + 1) for k in range(n)]

    n = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(n)
    if n < num_heads:
        slopes += power_of_two(2 * n)[0::2][: num_heads - n]
    return torch.tensor(slopes)


def alibi(slopes: Tensor | Sequence[float] | int) -> ScoreMod:
    """ALiBi: add ``-slope_h * |i' - j|`` where ``i' = i + lk - lq`` is the query's position
    aligned to the end of the keys (as with a KV cache). ``slopes`` is a (H,) tensor or sequence
    of finite numbers, one per query head, or a head count (then :func:`alibi_slopes`)."""
    if isinstance(slopes, bool):
        raise AttnKitError(f"alibi slopes must be a head count or a (H,) sequence of slopes; got {slopes!r}")
    if isinstance(slopes, int):
        sl = alibi_slopes(slopes)
    else:
        try:
            sl = torch.as_tensor(slopes, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise AttnKitError(f"alibi slopes must be a head count or a (H,) sequence of slopes; "
                               f"got {slopes!r:.80}") from err
        if sl.dim() != 1 or len(sl) == 0:
            raise ShapeError(f"alibi slopes must be 1-D (H,), one per query head; got shape {tuple(sl.shape)}")
        if not bool(torch.isfinite(sl).all()):
            raise AttnKitError(f"alibi slopes must be finite; got {sl.tolist()}")

    def fn(s, b, h, i, j, lq, lk):
        slope = sl.to(device=s.device, dtype=s.dtype)[h]
        return s - slope * (j - i - (lk - lq)).abs().to(s.dtype)

    def check(batch, heads, lq, lk):
        return None if len(sl) == heads else f"has {len(sl)} slopes but the call has {heads} query heads"

    return ScoreMod("alibi", fn, additive=True, check=check, params={"slopes": sl}, builtin=True)


def score_mod(fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor], name: str = "custom",
              *, additive: bool = False) -> ScoreMod:
    """Wrap a FlexAttention-style ``fn(score, b, h, q_idx, kv_idx)`` as a :class:`ScoreMod`."""
    if not callable(fn):
        raise AttnKitError(f"score_mod expects a callable; got {type(fn).__name__}")
    return ScoreMod(name, lambda s, b, h, i, j, lq, lk: fn(s, b, h, i, j), additive=additive)


def softcap(cap: float) -> ScoreMod:
    """Tanh soft-capping ``cap * tanh(s / cap)`` (Gemma 2, Grok): bounds the logits smoothly;
    ``cap`` is a finite number > 0."""
    cap = _positive("softcap cap", cap)
    return ScoreMod("softcap", lambda s, b, h, i, j, lq, lk: cap * torch.tanh(s / cap), params={"cap": cap},
                    builtin=True)


def apply_mods(s: Tensor, mods: Sequence[ScoreMod], b: Tensor, h: Tensor, i: Tensor, j: Tensor,
               lq: int, lk: int) -> Tensor:
    """Apply score modifiers in order to a score block ``s`` whose indices are ``b, h, i, j``."""
    for mod in mods:
        s = mod(s, b, h, i, j, lq, lk)
    return s
