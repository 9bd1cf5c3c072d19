"""Positional masks: causal, sliding window, dilated window and global tokens. Each classifies
its tiles analytically, so block-skipping costs no ``lq x lk`` buffer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import AttnKitError
from .base import EMPTY, FULL, PARTIAL, Align, Mask, _band_kinds, _check_align, _offset, _range_counts, _tile_ranges


@dataclass(frozen=True)
class Causal(Mask):
    """Query ``i`` attends keys ``j <= i + offset``; see :func:`causal`."""

    align: Align = "bottom_right"

    def __post_init__(self):
        _check_align(self.align)

    def mod(self, b, h, i, j, lq, lk):
        return j <= i + _offset(self.align, lq, lk)

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
            val = getattr(self, name)
            if not (val >= 0):
                raise AttnKitError(f"window {name} must be >= 0 (or math.inf); got {val!r}")

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
        if self.window < 0 or self.dilation < 1:
            raise AttnKitError(f"dilated needs window >= 0 and dilation >= 1; got window={self.window}, "
                               f"dilation={self.dilation}")

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

    indices: Tensor
    align: Align = "bottom_right"

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


def window(left: float, right: float | None = None, *, align: Align = "bottom_right") -> Mask:
    """Sliding window: query at key position ``i'`` attends ``i' - left <= j <= i' + right``
    (inclusive; ``right`` defaults to ``left``; ``math.inf`` for unbounded). ``window(1)``::

        1 1 0 0
        1 1 1 0
        0 1 1 1
        0 0 1 1

    ``window(2, 0)`` is the causal sliding window of Longformer / Mistral (3 keys per query).
    Positions align as in :func:`causal`.
    """
    return Window(left, left if right is None else right, align)


def dilated(window: int, dilation: int, *, causal: bool = False, align: Align = "bottom_right") -> Mask:
    """Dilated sliding window (Longformer): keys ``j = i' + k * dilation`` for
    ``-window <= k <= window`` (``k <= 0`` when ``causal``). ``dilated(1, 2)`` on 5 x 5::

        1 0 1 0 0
        0 1 0 1 0
        1 0 1 0 1
        0 1 0 1 0
        0 0 1 0 1
    """
    return Dilated(window, dilation, causal, align)


def global_tokens(indices: Sequence[int] | Tensor, *, align: Align = "bottom_right") -> Mask:
    """Global tokens (Longformer): the given positions attend everywhere and are attended by
    every query. Combine with ``|`` onto a local pattern. ``global_tokens([0])`` on 4 x 4::

        1 1 1 1
        1 0 0 0
        1 0 0 0
        1 0 0 0
    """
    idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
    return GlobalTokens(idx, align)

