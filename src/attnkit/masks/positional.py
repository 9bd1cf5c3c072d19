"""Positional masks: causal, sliding window, dilated window and global tokens. Each classifies
its tiles analytically, so block-skipping costs no ``lq x lk`` buffer."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import AttnKitError, DTypeError, ShapeError
from .base import EMPTY, FULL, PARTIAL, Align, Mask, _band_kinds, _check_align, _offset, _range_counts, _tile_ranges


def _whole(what: str, value: object, *, minimum: int = 0, allow_inf: bool = False) -> int | float:
    """``value`` as an int ``>= minimum`` (a whole float such as ``2.0`` is taken as ``2``), or
    ``math.inf`` when ``allow_inf``; anything else (bools, fractions, NaN, strings) raises
    :class:`AttnKitError` naming ``what``."""
    if not isinstance(value, bool):
        if allow_inf and isinstance(value, float) and value == math.inf:
            return math.inf
        n = int(value) if isinstance(value, float) and value.is_integer() else value
        try:
            n = operator.index(n)
        except TypeError:
            n = None
        if n is not None and n >= minimum:
            return n
    expected = f"an int >= {minimum}" + (" or math.inf" if allow_inf else "")
    raise AttnKitError(f"{what} must be {expected}; got {value!r}")


@dataclass(frozen=True)
class Causal(Mask):
    """Query ``i`` attends keys ``j <= i + offset``; see :func:`causal`."""

    align: Align = "bottom_right"

    def __post_init__(self):
        _check_align(self.align)

    def offset(self, lq: int, lk: int) -> int:
        """``o`` such that query ``i`` attends keys ``j <= i + o`` at these lengths."""
        return _offset(self.align, lq, lk)

    def mod(self, b, h, i, j, lq, lk):
        return j <= i + self.offset(lq, lk)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        return _band_kinds(-math.inf, 0, _offset(self.align, lq, lk), lq, lk, block_q, block_k, device)


@dataclass(frozen=True)
class Window(Mask):
    """Query ``i`` (at key position ``i' = i + offset``) attends ``i' - left <= j <= i' + right``."""

    left: float
    right: float
    align: Align = "bottom_right"

    def __post_init__(self):
        _check_align(self.align)
        for name in ("left", "right"):
            object.__setattr__(self, name, _whole(f"window {name}", getattr(self, name), allow_inf=True))

    def mod(self, b, h, i, j, lq, lk):
        d = j - (i + _offset(self.align, lq, lk))
        return (d >= -self.left) & (d <= self.right)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        return _band_kinds(-self.left, self.right, _offset(self.align, lq, lk), lq, lk,
                           block_q, block_k, device)


@dataclass(frozen=True)
class Dilated(Mask):
    """Every ``dilation``-th key within ``window * dilation`` positions of the query."""

    window: int
    dilation: int
    causal: bool = False
    align: Align = "bottom_right"

    def __post_init__(self):
        _check_align(self.align)
        object.__setattr__(self, "window", _whole("dilated window", self.window, allow_inf=True))
        object.__setattr__(self, "dilation", _whole("dilated dilation", self.dilation, minimum=1))
        if not isinstance(self.causal, bool):
            raise AttnKitError(f"dilated causal must be True or False; got {self.causal!r}")

    def _band(self) -> tuple[float, float]:
        reach = self.window * self.dilation
        return -reach, (0 if self.causal else reach)

    def mod(self, b, h, i, j, lq, lk):
        d = j - (i + _offset(self.align, lq, lk))
        lo, hi = self._band()
        return (d >= lo) & (d <= hi) & (torch.remainder(d, self.dilation) == 0)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        lo, hi = self._band()
        kinds = _band_kinds(lo, hi, _offset(self.align, lq, lk), lq, lk, block_q, block_k, device)
        if self.dilation > 1:
            kinds = torch.where(kinds == FULL, PARTIAL, kinds).to(torch.int8)
        return kinds


@dataclass(frozen=True, eq=False)
class GlobalTokens(Mask):
    """Global tokens (Longformer): they attend to every key and every query attends to them."""

    indices: Tensor  # (G,) int64 positions, each >= 0
    align: Align = "bottom_right"

    def __post_init__(self):
        _check_align(self.align)
        idx = self.indices
        if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            got = idx.dtype if isinstance(idx, Tensor) else type(idx).__name__
            raise DTypeError(f"global_tokens indices must be integers; got {got}")
        if idx.dim() != 1:
            raise ShapeError(f"global_tokens indices must be 1-D (G,); got shape {tuple(idx.shape)}")
        if bool((idx < 0).any()):
            raise AttnKitError(f"global_tokens indices must be >= 0 (positions); got {idx.tolist()}")
        object.__setattr__(self, "indices", idx.to(torch.int64))

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        end = max(lk, _offset(self.align, lq, lk) + lq)  # one past the last query or key position
        bad = self.indices[self.indices >= end]
        if len(bad):
            raise ShapeError(f"global_tokens indices {bad.tolist()} are out of range for lq={lq}, lk={lk} "
                             f"(align={self.align!r}): valid positions are 0 .. {end - 1}")

    def mod(self, b, h, i, j, lq, lk):
        g = self.indices.to(j.device)
        row_global = torch.isin(i + _offset(self.align, lq, lk), g)
        return row_global | torch.isin(j, g)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        off = _offset(self.align, lq, lk)
        g = self.indices.to(device)
        qflag = torch.isin(torch.arange(lq, device=device) + off, g)
        kflag = torch.isin(torch.arange(lk, device=device), g)
        r0, r1 = _tile_ranges(lq, block_q, device)
        c0, c1 = _tile_ranges(lk, block_k, device)
        rows, cols = _range_counts(qflag, r0, r1), _range_counts(kflag, c0, c1)  # (nQ,), (nK,)
        all_rows = (rows == r1 - r0 + 1).view(-1, 1)
        all_cols = (cols == c1 - c0 + 1).view(1, -1)
        none = (rows == 0).view(-1, 1) & (cols == 0).view(1, -1)
        kinds = torch.where(all_rows | all_cols, FULL, torch.where(none, EMPTY, PARTIAL))
        return kinds.to(torch.int8).view(1, 1, *kinds.shape)




def causal(align: Align = "bottom_right") -> Mask:
    """Causal mask: a query attends to keys at or before its own position.

    With ``lq == lk`` query ``i`` attends ``j <= i``. When ``lk > lq`` (a KV cache holding
    ``lk - lq`` earlier tokens) the default ``align="bottom_right"`` puts the last query at the
    last key, e.g. ``lq = 2``, ``lk = 5``::

        1 1 1 1 0
        1 1 1 1 1

    ``align="top_left"`` gives ``j <= i`` instead (PyTorch SDPA's ``is_causal``)::

        1 0 0 0 0
        1 1 0 0 0

    When ``lq > lk`` with bottom-right alignment the first ``lq - lk`` rows attend to nothing
    and yield zeros.
    """
    return Causal(align)


def window(left: int | float, right: int | float | None = None, *, align: Align = "bottom_right") -> Mask:
    """Sliding window: query at key position ``i'`` attends ``i' - left <= j <= i' + right``
    (inclusive; ``right`` defaults to ``left``). Each side is an int ``>= 0`` or ``math.inf``
    (unbounded). ``window(1)``::

        1 1 0 0
        1 1 1 0
        0 1 1 1
        0 0 1 1

    ``window(2, 0)`` is the causal sliding window of Longformer / Mistral (3 keys per query).
    Positions align as in :func:`causal`.
    """
    return Window(left, left if right is None else right, align)


def dilated(window: int | float, dilation: int, *, causal: bool = False, align: Align = "bottom_right") -> Mask:
    """Dilated sliding window (Longformer): keys ``j = i' + k * dilation`` for
    ``-window <= k <= window`` (``k <= 0`` when ``causal``); ``window`` is an int ``>= 0`` or
    ``math.inf``, ``dilation`` an int ``>= 1``. ``dilated(1, 2)`` on 5 x 5::

        1 0 1 0 0
        0 1 0 1 0
        1 0 1 0 1
        0 1 0 1 0
        0 0 1 0 1
    """
    return Dilated(window, dilation, causal, align)


def global_tokens(indices: Sequence[int] | Tensor | int, *, align: Align = "bottom_right") -> Mask:
    """Global tokens (Longformer): the given positions attend everywhere and are attended by
    every query. Combine with ``|`` onto a local pattern. ``global_tokens([0])`` on 4 x 4::

        1 1 1 1
        1 0 0 0
        1 0 0 0
        1 0 0 0

    ``indices`` are non-negative integer positions in key coordinates (queries aligned as in
    :func:`causal`); a call whose sizes leave one of them outside every query and key position
    is refused.
    """
    try:
        idx = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError) as err:
        raise AttnKitError(f"global_tokens indices must be a sequence of ints; got {indices!r:.80}") from err
    if idx.numel() == 0:
        idx = idx.to(torch.int64)  # an empty list: no global tokens
    if idx.dim() == 0:
        idx = idx.view(1)
    return GlobalTokens(idx, align)
