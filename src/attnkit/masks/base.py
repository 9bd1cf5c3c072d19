"""The mask base: :class:`Mask` (a predicate over ``(b, h, i, j)``, True = attend), the
combinators ``&``, ``|``, ``~``, the identity :class:`Full`, and the helpers the mask kinds share.
The tile plan (:class:`~attnkit.masks.plan.BlockMask`) lives in :mod:`attnkit.masks.plan`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from ..errors import AttnKitError, ShapeError

if TYPE_CHECKING:
    from .plan import BlockMask

EMPTY, PARTIAL, FULL = 0, 1, 2
"""Tile kinds: no key allowed / some allowed / all allowed."""

DEFAULT_BLOCK = 64
"""Tile size (query rows and keys) of the tile plan of every tile-based implementation unless its
options say otherwise; one size, so that they share one memoised plan per mask
(:func:`tile_plan`)."""

Align = Literal["bottom_right", "top_left"]
ModFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

_REFINE_BUDGET = 1 << 26  # elements evaluated when refining partial tiles exactly


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _offset(align: Align, lq: int, lk: int) -> int:
    """Key position of query 0: ``lk - lq`` for bottom-right alignment, else 0."""
    return lk - lq if align == "bottom_right" else 0


def _check_align(align: str) -> None:
    if align not in ("bottom_right", "top_left"):
        raise AttnKitError(f"align must be 'bottom_right' or 'top_left'; got {align!r}")


def _tile_ranges(n: int, block: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """First and last (inclusive) index of each tile of ``block`` along a length ``n``."""
    first = torch.arange(0, n, block, device=device)
    last = torch.clamp(first + block - 1, max=n - 1)
    return first, last


def _grid(lq: int, lk: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """Query and key index tensors shaped ``(1, 1, lq, 1)`` and ``(1, 1, 1, lk)``."""
    i = torch.arange(lq, device=device).view(1, 1, lq, 1)
    j = torch.arange(lk, device=device).view(1, 1, 1, lk)
    return i, j


def _band_kinds(lo: float, hi: float, off: int, lq: int, lk: int, bq: int, bk: int,
                device: torch.device | None) -> Tensor:
    """Tile kinds of the band ``lo <= j - (i + off) <= hi`` as ``(1, 1, nQ, nK)`` int8."""
    r0, r1 = _tile_ranges(lq, bq, device)
    c0, c1 = _tile_ranges(lk, bk, device)
    dmin = c0.view(1, -1) - (r1.view(-1, 1) + off)  # (nQ, nK) smallest j - i' in the tile
    dmax = c1.view(1, -1) - (r0.view(-1, 1) + off)  # (nQ, nK) largest j - i' in the tile
    kinds = torch.full(dmin.shape, PARTIAL, dtype=torch.int8, device=device)
    kinds[(dmin >= lo) & (dmax <= hi)] = FULL
    kinds[(dmax < lo) | (dmin > hi)] = EMPTY
    return kinds.view(1, 1, *kinds.shape)


def _range_counts(flags: Tensor, first: Tensor, last: Tensor) -> Tensor:
    """How many ``flags`` are set in each inclusive range ``[first, last]`` (last dim)."""
    csum = torch.nn.functional.pad(flags.to(torch.int64).cumsum(-1), (1, 0))
    return csum[..., last + 1] - csum[..., first]


def to_string(grid: Tensor) -> str:
    """Render a 2-D boolean grid as rows of ``1`` / ``0`` (as in the docstrings)."""
    if grid.dim() != 2:
        raise ShapeError(f"to_string expects a 2-D grid (lq, lk); got shape {tuple(grid.shape)}")
    return "\n".join(" ".join("1" if x else "0" for x in row) for row in grid.tolist())


# ----------------------------------------------------------------------------------------------
# the Mask base class
# ----------------------------------------------------------------------------------------------


class Mask:
    """Base class: a boolean predicate over ``(b, h, i, j)``; ``True`` means attend.

    Subclasses implement :meth:`mod` and, where they can do it without an ``lq x lk`` buffer,
    :meth:`tile_kinds`. Everything else (dense rendering, tile classification, composition)
    comes from here.
    """

    num_batch: int = 1  # size of the batch dimension the mask depends on (1: none)
    num_heads: int = 1  # size of the head dimension the mask depends on (1: none)

    def mod(self, b: Tensor, h: Tensor, i: Tensor, j: Tensor, lq: int, lk: int) -> Tensor:
        """Whether query ``i`` may attend key ``j`` (broadcast over the index tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement mod()")

    # -- checks ---------------------------------------------------------------------------------
    def validate(self, lq: int, lk: int, batch: int, heads: int) -> None:
        """Raise :class:`ShapeError` if the mask cannot apply to this problem size."""
        for name, n, size in (("batch", self.num_batch, batch), ("head", self.num_heads, heads)):
            if n not in (1, size):
                raise ShapeError(f"mask {self!r} has {name} size {n}; expected 1 or {size}")

    def leaves(self) -> Iterator[Mask]:
        """The primitive masks this mask is made of (itself for a primitive)."""
        yield self

    def key_keep(self, lk: int, device: torch.device | str | None = None) -> Tensor | None:
        """Keys that *no* query of a batch element may attend, as ``keep (Bm, lk)`` bool (False =
        masked for every query and head), or None when the mask does not exclude keys that way.
        Key-side masks (padding, key masks) answer; attention zeroes those keys and values before
        any arithmetic, so whatever they hold (NaN, inf, stale cache entries) never reaches the
        output or the gradients."""
        return None

    # -- renderings -----------------------------------------------------------------------------
    def dense(self, lq: int, lk: int, *, device: torch.device | str | None = None) -> Tensor:
        """The boolean mask, ``True`` = attend: shape ``(lq, lk)``, or ``(B, H, lq, lk)`` when the
        mask depends on batch or head (e.g. padding). For tests, plots and small problems."""
        b = torch.arange(self.num_batch, device=device).view(-1, 1, 1, 1)
        h = torch.arange(self.num_heads, device=device).view(1, -1, 1, 1)
        i, j = _grid(lq, lk, device)
        out = self.mod(b, h, i, j, lq, lk).expand(self.num_batch, self.num_heads, lq, lk)
        return out[0, 0] if self.num_batch == self.num_heads == 1 else out

    def dense4(self, lq: int, lk: int, *, device: torch.device | str | None = None) -> Tensor:
        """Like :meth:`dense` but always 4-D ``(Bm, Hm, lq, lk)``."""
        out = self.dense(lq, lk, device=device)
        return out.view(1, 1, lq, lk) if out.dim() == 2 else out

    def mask_mod(self, lq: int, lk: int) -> ModFn:
        """The FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` of this mask for ``lq``
        queries and ``lk`` keys (positional masks need the sizes to align the last query with the
        last key). ``create_block_mask`` and ``flex_attention`` accept it as is::

            create_block_mask(mask.mask_mod(T, S), B, H, T, S)
        """

        fixed = self._at_size(lq, lk)  # FlexAttention traces mask_mod: no memo lookups inside

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return fixed.mod(b, h, q_idx, kv_idx, lq, lk)

        return mask_mod

    def _at_size(self, lq: int, lk: int) -> Mask:
        """This mask with its size-dependent parts (e.g. a layout drawn for the size) fixed."""
        return self

    def tile_kinds(self, lq: int, lk: int, block_q: int, block_k: int,
                   device: torch.device | None = None) -> Tensor:
        """Kinds of all tiles, ``(Bm, Hm, nQ, nK)`` int8. May say PARTIAL where the tile is in fact
        empty or full (safe); the default evaluates the mask exactly, one query tile row at a time."""
        nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
        kinds = torch.empty(self.num_batch, self.num_heads, nq, nk, dtype=torch.int8, device=device)
        b = torch.arange(self.num_batch, device=device).view(-1, 1, 1, 1)
        h = torch.arange(self.num_heads, device=device).view(1, -1, 1, 1)
        j = torch.arange(lk, device=device).view(1, 1, 1, lk)
        pad_k = nk * block_k - lk
        for qi in range(nq):
            i = torch.arange(qi * block_q, min(lq, (qi + 1) * block_q), device=device).view(1, 1, -1, 1)
            rows = self.mod(b, h, i, j, lq, lk).expand(self.num_batch, self.num_heads, i.shape[2], lk)
            anyv = torch.nn.functional.pad(rows, (0, pad_k), value=False)
            allv = torch.nn.functional.pad(rows, (0, pad_k), value=True)
            anyv = anyv.reshape(*anyv.shape[:2], -1, nk, block_k).any(-1).any(-2)
            allv = allv.reshape(*allv.shape[:2], -1, nk, block_k).all(-1).all(-2)
            kinds[:, :, qi] = torch.where(allv, FULL, torch.where(anyv, PARTIAL, EMPTY)).to(torch.int8)
        return kinds

    def blocks(self, lq: int, lk: int, block_q: int = DEFAULT_BLOCK, block_k: int | None = None, *,
               device: torch.device | str | None = None, refine: bool = True) -> BlockMask:
        """Classify ``(block_q, block_k)`` tiles as empty / partial / full (a fresh
        :class:`BlockMask`; implementations use the memoised :func:`tile_plan`).

        With ``refine=True`` tiles first classified PARTIAL are evaluated exactly (when that costs
        fewer than 2**26 element checks), so an ``&`` of two masks never reports an empty tile as
        partial.
        """
        from .plan import BlockMask, _eval_tiles

        block_k = block_q if block_k is None else block_k
        if block_q < 1 or block_k < 1:
            raise AttnKitError(f"block sizes must be >= 1; got block_q={block_q}, block_k={block_k}")
        dev = torch.device(device) if device is not None else None
        kinds = self.tile_kinds(lq, lk, block_q, block_k, dev)
        nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
        kinds = kinds.expand(kinds.shape[0], kinds.shape[1], nq, nk).contiguous()
        if refine:
            part = (kinds == PARTIAL).nonzero()
            if 0 < len(part) and len(part) * block_q * block_k <= _REFINE_BUDGET:
                sub = _eval_tiles(self, lq, lk, block_q, block_k, part)
                valid = _eval_tiles(full(), lq, lk, block_q, block_k, part)
                anyv = sub.flatten(1).any(-1)
                allv = (sub | ~valid).flatten(1).all(-1)
                new = torch.where(allv, FULL, torch.where(anyv, PARTIAL, EMPTY)).to(torch.int8)
                kinds[part[:, 0], part[:, 1], part[:, 2], part[:, 3]] = new
        return BlockMask(self, kinds, lq, lk, block_q, block_k)

    # -- composition ----------------------------------------------------------------------------
    def __and__(self, other: Mask) -> Mask:
        return And(self, as_mask(other))

    def __or__(self, other: Mask) -> Mask:
        return Or(self, as_mask(other))

    def __invert__(self) -> Mask:
        return Not(self)



@dataclass(frozen=True)
class Full(Mask):
    """Every query attends every key (the identity of ``&``)."""

    def mod(self, b, h, i, j, lq, lk):
        return torch.ones((), dtype=torch.bool, device=i.device).expand(torch.broadcast_shapes(i.shape, j.shape))

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        return torch.full((1, 1, 1, 1), FULL, dtype=torch.int8, device=device)


# ----------------------------------------------------------------------------------------------
# combinators
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Combined(Mask):
    parts: tuple[Mask, ...] = field(default=())

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return max(p.num_batch for p in self.parts)

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return max(p.num_heads for p in self.parts)

    def leaves(self) -> Iterator[Mask]:
        for p in self.parts:
            yield from p.leaves()

    def _at_size(self, lq: int, lk: int) -> Mask:
        parts = tuple(p._at_size(lq, lk) for p in self.parts)
        return self if all(a is b for a, b in zip(parts, self.parts)) else type(self)(*parts)

    def validate(self, lq, lk, batch, heads):
        for p in self.parts:
            p.validate(lq, lk, batch, heads)


class And(_Combined):
    """Attend where every part allows."""

    def __init__(self, *parts: Mask):
        object.__setattr__(self, "parts", tuple(parts))

    def mod(self, b, h, i, j, lq, lk):
        out = self.parts[0].mod(b, h, i, j, lq, lk)
        for p in self.parts[1:]:
            out = out & p.mod(b, h, i, j, lq, lk)
        return out

    def key_keep(self, lk, device=None):
        out = None
        for p in self.parts:
            keep = p.key_keep(lk, device)
            if keep is not None:
                out = keep if out is None else out & keep
        return out

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        kinds = [p.tile_kinds(lq, lk, block_q, block_k, device) for p in self.parts]
        out = kinds[0]
        for k in kinds[1:]:
            both_full = (out == FULL) & (k == FULL)
            any_empty = (out == EMPTY) | (k == EMPTY)
            out = torch.where(any_empty, EMPTY, torch.where(both_full, FULL, PARTIAL)).to(torch.int8)
        return out

    def __repr__(self) -> str:
        return " & ".join(f"({p!r})" if isinstance(p, Or) else repr(p) for p in self.parts)


class Or(_Combined):
    """Attend where any part allows."""

    def __init__(self, *parts: Mask):
        object.__setattr__(self, "parts", tuple(parts))

    def mod(self, b, h, i, j, lq, lk):
        out = self.parts[0].mod(b, h, i, j, lq, lk)
        for p in self.parts[1:]:
            out = out | p.mod(b, h, i, j, lq, lk)
        return out

    def key_keep(self, lk, device=None):
        keeps = [p.key_keep(lk, device) for p in self.parts]
        if any(k is None for k in keeps):
            return None
        out = keeps[0]
        for k in keeps[1:]:
            out = out | k
        return out

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        kinds = [p.tile_kinds(lq, lk, block_q, block_k, device) for p in self.parts]
        out = kinds[0]
        for k in kinds[1:]:
            any_full = (out == FULL) | (k == FULL)
            both_empty = (out == EMPTY) & (k == EMPTY)
            out = torch.where(any_full, FULL, torch.where(both_empty, EMPTY, PARTIAL)).to(torch.int8)
        return out

    def __repr__(self) -> str:
        return " | ".join(repr(p) for p in self.parts)


class Not(_Combined):
    """Attend where the part does not."""

    def __init__(self, part: Mask):
        object.__setattr__(self, "parts", (part,))

    def mod(self, b, h, i, j, lq, lk):
        return ~self.parts[0].mod(b, h, i, j, lq, lk)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        return (FULL - self.parts[0].tile_kinds(lq, lk, block_q, block_k, device)).to(torch.int8)

    def __repr__(self) -> str:
        return f"~({self.parts[0]!r})"



def full() -> Mask:
    """Every query attends every key."""
    return Full()



def as_mask(mask: Mask | BlockMask | Tensor | None) -> Mask | None:
    """Normalise what users pass as ``mask=``: a Mask, a BlockMask (its mask), a bool tensor, or None."""
    from .plan import BlockMask  # noqa: F811  (the runtime class; the name above is for type checkers)

    if mask is None or isinstance(mask, Mask):
        return mask
    if isinstance(mask, BlockMask):
        return mask.mask
    from .data import from_tensor

    return from_tensor(mask)
