"""Attention masks: typed, composable, frozen objects. ``True`` means *attend*.

A mask is a predicate ``mod(b, h, i, j, lq, lk) -> bool`` over batch ``b``, head ``h``, query
position ``i`` and key position ``j``, evaluated on broadcastable ``int64`` index tensors. From
that one predicate every implementation gets what it needs:

* ``mask.dense(lq, lk)``: the boolean grid, for the reference implementation, tests and plots;
* ``mask.blocks(lq, lk, block_q, block_k)``: a :class:`BlockMask` classifying every
  ``(block_q, block_k)`` tile as empty / partial / full, for block-skipping implementations
  (computed analytically for structured masks, so it costs no ``lq x lk`` buffer);
* ``mask.mask_mod(lq, lk)``: a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)``.

Masks combine with ``&`` (both allow), ``|`` (either allows) and ``~`` (negation)::

    >>> from attnkit import masks
    >>> m = masks.causal() & masks.window(1)
    >>> print(masks.to_string(m.dense(4, 4)))
    1 0 0 0
    1 1 0 0
    0 1 1 0
    0 0 1 1

Alignment when ``lq != lk``: positional masks (``causal``, ``window``, ``dilated``,
``global_tokens``) align the *last* query with the *last* key by default (``align="bottom_right"``,
as in KV-cached decoding: query ``i`` sits at key position ``i + lk - lq``). With
``align="top_left"`` query ``i`` sits at key position ``i``. A query row that may attend to no
key at all yields zero weights and a zero output in every implementation, never NaN.

Shape legend: B batch, H heads, lq (T) query length, lk (S) key length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ._utils import as_4d, index_broadcast
from .errors import AttnKitError, DTypeError, ShapeError

__all__ = [
    "EMPTY",
    "PARTIAL",
    "FULL",
    "Mask",
    "BlockMask",
    "Full",
    "Causal",
    "Window",
    "Dilated",
    "GlobalTokens",
    "Random",
    "BlockSparse",
    "Padding",
    "KeyMask",
    "DenseMask",
    "FromMod",
    "And",
    "Or",
    "Not",
    "full",
    "causal",
    "window",
    "dilated",
    "global_tokens",
    "random",
    "block_sparse",
    "padding",
    "from_key_padding",
    "from_tensor",
    "from_mod",
    "as_mask",
    "to_string",
]

EMPTY, PARTIAL, FULL = 0, 1, 2
"""Tile kinds: no key allowed / some allowed / all allowed."""

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
# BlockMask: tile classification
# ----------------------------------------------------------------------------------------------


def _eval_tiles(mask: Mask, lq: int, lk: int, bq: int, bk: int, tiles: Tensor) -> Tensor:
    """Evaluate ``mask`` on the tiles listed in ``tiles`` (n, 4) = (b, h, qi, ki).

    Returns ``(n, bq, bk)`` bool; positions past ``lq`` / ``lk`` are False.
    """
    dev = tiles.device
    b, h, qi, ki = (tiles[:, c].view(-1, 1, 1) for c in range(4))
    i = qi * bq + torch.arange(bq, device=dev).view(1, bq, 1)  # (n, bq, 1)
    j = ki * bk + torch.arange(bk, device=dev).view(1, 1, bk)  # (n, 1, bk)
    valid = (i < lq) & (j < lk)
    out = mask.mod(b, h, i.clamp(max=lq - 1), j.clamp(max=lk - 1), lq, lk)
    return out.expand(valid.shape) & valid


@dataclass(frozen=True, eq=False)
class BlockMask:
    """A mask classified into ``(block_q, block_k)`` tiles: empty, partial or full.

    ``kinds`` has shape ``(Bm, Hm, nQ, nK)`` (``Bm``/``Hm`` are 1 when the mask does not depend on
    batch/head) with values :data:`EMPTY`, :data:`PARTIAL`, :data:`FULL`. Implementations skip
    empty tiles, run full tiles without a mask and apply :meth:`tile_mask` to partial ones.
    The last tile row/column may be shorter than the block when ``lq``/``lk`` do not divide.
    """

    mask: Mask
    kinds: Tensor
    lq: int
    lk: int
    block_q: int
    block_k: int

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles ``(nQ, nK)``."""
        return self.kinds.shape[-2], self.kinds.shape[-1]

    def tile_mask(self, tiles: Tensor) -> Tensor:
        """Dense sub-masks ``(n, block_q, block_k)`` of tiles given as ``(n, 4)`` rows (b, h, qi, ki)."""
        return _eval_tiles(self.mask, self.lq, self.lk, self.block_q, self.block_k, tiles)

    def counts(self) -> dict[str, int]:
        """Number of empty, partial and full tiles."""
        return {name: int((self.kinds == k).sum()) for name, k in
                (("empty", EMPTY), ("partial", PARTIAL), ("full", FULL))}

    def density(self) -> float:
        """Fraction of tiles that are not empty (what a block-skipping kernel computes)."""
        return float((self.kinds != EMPTY).float().mean())

    def sparsity(self) -> float:
        """Fraction of tiles that are empty."""
        return 1.0 - self.density()

    def to_dense(self) -> Tensor:
        """Rebuild the element mask ``(Bm, Hm, lq, lk)`` from the tiles (for tests and debugging)."""
        bm, hm, nq, nk = self.kinds.shape
        out = torch.zeros(bm, hm, nq * self.block_q, nk * self.block_k, dtype=torch.bool,
                          device=self.kinds.device)
        view = out.view(bm, hm, nq, self.block_q, nk, self.block_k)
        full_idx = (self.kinds == FULL).nonzero()
        for b, h, qi, ki in full_idx.tolist():
            view[b, h, qi, :, ki, :] = True
        part_idx = (self.kinds == PARTIAL).nonzero()
        if len(part_idx):
            sub = self.tile_mask(part_idx)
            for n, (b, h, qi, ki) in enumerate(part_idx.tolist()):
                view[b, h, qi, :, ki, :] = sub[n]
        return out[..., : self.lq, : self.lk]

    def to_string(self, b: int = 0, h: int = 0) -> str:
        """ASCII picture of the tiles of batch ``b``, head ``h``: ``#`` full, ``+`` partial, ``.`` empty."""
        sym = {EMPTY: ".", PARTIAL: "+", FULL: "#"}
        rows = self.kinds[min(b, self.kinds.shape[0] - 1), min(h, self.kinds.shape[1] - 1)]
        return "\n".join("".join(sym[int(x)] for x in row) for row in rows.tolist())

    def __repr__(self) -> str:
        c = self.counts()
        return (f"BlockMask(lq={self.lq}, lk={self.lk}, block=({self.block_q}, {self.block_k}), "
                f"tiles={self.shape}, full={c['full']}, partial={c['partial']}, empty={c['empty']})")


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
        for leaf in self.leaves():
            if leaf is not self:
                leaf.validate(lq, lk, batch, heads)

    def leaves(self) -> Iterator[Mask]:
        """The primitive masks this mask is made of (itself for a primitive)."""
        yield self

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
        """A FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)`` for sizes ``lq``, ``lk``."""
        return lambda b, h, q_idx, kv_idx: self.mod(b, h, q_idx, kv_idx, lq, lk)

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

    def blocks(self, lq: int, lk: int, block_q: int = 64, block_k: int | None = None, *,
               device: torch.device | str | None = None, refine: bool = True) -> BlockMask:
        """Classify ``(block_q, block_k)`` tiles as empty / partial / full.

        With ``refine=True`` tiles first classified PARTIAL are evaluated exactly (when that costs
        fewer than 2**26 element checks), so an ``&`` of two masks never reports an empty tile as
        partial.
        """
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


# ----------------------------------------------------------------------------------------------
# primitive masks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Full(Mask):
    """Every query attends every key (the identity of ``&``)."""

    def mod(self, b, h, i, j, lq, lk):
        return torch.ones((), dtype=torch.bool, device=i.device).expand(torch.broadcast_shapes(i.shape, j.shape))

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        return torch.full((1, 1, 1, 1), FULL, dtype=torch.int8, device=device)


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


_MIX1, _MIX2 = -4658895280553007687, -7723592293110705685  # splitmix64 constants as int64


def _hash_uniform(seed: int, i: Tensor, j: Tensor) -> Tensor:
    """A deterministic uniform [0, 1) number per (seed, i, j): splitmix64 on int64 tensors."""
    mixed = (seed * 0x27D4EB2F165667C5) % (1 << 64)  # the seed's term, wrapped to int64 in Python
    x = i * 0x9E3779B1 + j * 0x85EBCA77 + (mixed - (1 << 64) if mixed >= (1 << 63) else mixed)
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * _MIX1
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * _MIX2
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return ((x >> 11) & ((1 << 53) - 1)).double() / float(1 << 53)


@dataclass(frozen=True)
class Random(Mask):
    """Each (query, key) pair kept independently with probability ``density`` (seeded hash)."""

    density: float
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.density <= 1.0:
            raise AttnKitError(f"random mask density must be in [0, 1]; got {self.density!r}")

    def mod(self, b, h, i, j, lq, lk):
        return _hash_uniform(self.seed, i, j) < self.density

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        kind = EMPTY if self.density == 0 else FULL if self.density == 1 else PARTIAL
        return torch.full((1, 1, 1, 1), kind, dtype=torch.int8, device=device)


@dataclass(frozen=True, eq=False)
class BlockSparse(Mask):
    """A block layout: query block ``i // block_q`` attends key block ``j // block_k`` where
    ``layout`` is True. ``layout`` is ``(nQB, nKB)`` or per head ``(H, nQB, nKB)``."""

    layout: Tensor
    block_q: int
    block_k: int

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.layout.shape[0]

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        nqb, nkb = self.layout.shape[-2:]
        if nqb * self.block_q < lq or nkb * self.block_k < lk:
            raise ShapeError(f"block_sparse layout of shape {tuple(self.layout.shape)} with blocks "
                             f"({self.block_q}, {self.block_k}) covers ({nqb * self.block_q}, "
                             f"{nkb * self.block_k}) positions; the problem needs ({lq}, {lk})")

    def mod(self, b, h, i, j, lq, lk):
        lay = self.layout.to(i.device)
        hh = h if lay.shape[0] > 1 else torch.zeros_like(h)
        return lay[hh, i // self.block_q, j // self.block_k]

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        lay = self.layout.to(device).to(torch.int64)  # (Hl, nQB, nKB)
        integral = torch.nn.functional.pad(lay.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
        r0, r1 = _tile_ranges(lq, block_q, device)
        c0, c1 = _tile_ranges(lk, block_k, device)
        q0, q1 = (r0 // self.block_q).view(-1, 1), (r1 // self.block_q).view(-1, 1) + 1
        k0, k1 = (c0 // self.block_k).view(1, -1), (c1 // self.block_k).view(1, -1) + 1
        count = integral[:, q1, k1] - integral[:, q0, k1] - integral[:, q1, k0] + integral[:, q0, k0]
        cells = (q1 - q0) * (k1 - k0)
        kinds = torch.where(count == cells, FULL, torch.where(count == 0, EMPTY, PARTIAL))
        return kinds.to(torch.int8).unsqueeze(0)


@dataclass(frozen=True, eq=False)
class Padding(Mask):
    """Key padding by lengths: in batch ``b`` only keys ``j < lengths[b]`` are attended."""

    lengths: Tensor

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.lengths.shape[0]

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        if len(self.lengths) and (int(self.lengths.max()) > lk or int(self.lengths.min()) < 0):
            raise ShapeError(f"padding lengths must be in [0, {lk}] (the key length); got "
                             f"{self.lengths.tolist()}")

    def mod(self, b, h, i, j, lq, lk):
        return j < self.lengths.to(j.device)[b]

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        c0, c1 = _tile_ranges(lk, block_k, device)
        n = self.lengths.to(device).view(-1, 1)
        kinds = torch.where(c1.view(1, -1) < n, FULL, torch.where(c0.view(1, -1) >= n, EMPTY, PARTIAL))
        return kinds.to(torch.int8).view(-1, 1, 1, kinds.shape[-1])


@dataclass(frozen=True, eq=False)
class KeyMask(Mask):
    """Key padding from a boolean tensor ``keep`` of shape ``(B, S)``, True = attend that key."""

    keep: Tensor

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.keep.shape[0]

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        if self.keep.shape[-1] != lk:
            raise ShapeError(f"key padding mask has shape {tuple(self.keep.shape)}; expected (B, {lk})")

    def mod(self, b, h, i, j, lq, lk):
        return self.keep.to(j.device)[b, j]

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        nk = math.ceil(lk / block_k)
        keep = self.keep.to(device)
        pad = nk * block_k - lk
        anyv = torch.nn.functional.pad(keep, (0, pad), value=False).view(-1, nk, block_k).any(-1)
        allv = torch.nn.functional.pad(keep, (0, pad), value=True).view(-1, nk, block_k).all(-1)
        kinds = torch.where(allv, FULL, torch.where(anyv, PARTIAL, EMPTY))
        return kinds.to(torch.int8).view(-1, 1, 1, nk)


@dataclass(frozen=True, eq=False)
class DenseMask(Mask):
    """An explicit boolean tensor broadcastable to ``(B, H, lq, lk)``, True = attend."""

    tensor: Tensor  # stored 4-D (Bm, Hm, lq, lk)

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.tensor.shape[0]

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.tensor.shape[1]

    def validate(self, lq, lk, batch, heads):
        t = self.tensor
        ok = (t.shape[0] in (1, batch) and t.shape[1] in (1, heads) and t.shape[2] in (1, lq)
              and t.shape[3] in (1, lk))
        if not ok:
            raise ShapeError(f"mask tensor has shape {tuple(t.shape)}; expected a shape broadcastable "
                             f"to (B, H, T, S) = ({batch}, {heads}, {lq}, {lk})")

    def mod(self, b, h, i, j, lq, lk):
        return index_broadcast(self.tensor, b, h, i, j)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        """Exact kinds ``(Bm, Hm, nQ, nK)`` by reshaping the stored tensor into tiles."""
        t = self.tensor.to(device).expand(self.num_batch, self.num_heads, lq, lk)
        nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
        pad = (0, nk * block_k - lk, 0, nq * block_q - lq)
        tiles = lambda x: x.reshape(*x.shape[:2], nq, block_q, nk, block_k)
        anyv = tiles(torch.nn.functional.pad(t, pad, value=False)).any(-1).any(-2)
        allv = tiles(torch.nn.functional.pad(t, pad, value=True)).all(-1).all(-2)
        return torch.where(allv, FULL, torch.where(anyv, PARTIAL, EMPTY)).to(torch.int8)


@dataclass(frozen=True, eq=False)
class FromMod(Mask):
    """A user predicate ``fn(b, h, q_idx, kv_idx) -> bool tensor`` (FlexAttention ``mask_mod``)."""

    fn: ModFn
    name: str = "custom"

    def mod(self, b, h, i, j, lq, lk):
        return self.fn(b, h, i, j)


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


# ----------------------------------------------------------------------------------------------
# constructors (the public, documented way to build masks)
# ----------------------------------------------------------------------------------------------


def full() -> Mask:
    """Every query attends every key."""
    return Full()


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


def random(density: float, seed: int = 0) -> Mask:
    """Each (query, key) pair kept with probability ``density``, from a counter-based hash of
    ``(seed, i, j)``: the same seed gives the same mask at any size, tile by tile."""
    return Random(float(density), int(seed))


def block_sparse(layout: Tensor, block_size: int | tuple[int, int]) -> Mask:
    """A block layout (``(nQB, nKB)`` or ``(H, nQB, nKB)`` bool): query block ``bi`` attends key
    block ``bj`` where ``layout[bi, bj]``. ``block_size`` is an int or ``(block_q, block_k)``.
    E.g. layout ``[[1, 0], [1, 1]]`` with block 2 on 4 x 4::

        1 1 0 0
        1 1 0 0
        1 1 1 1
        1 1 1 1
    """
    if not isinstance(layout, Tensor):
        layout = torch.as_tensor(layout)
    if layout.dim() not in (2, 3):
        raise ShapeError(f"block_sparse layout must be (nQB, nKB) or (H, nQB, nKB); got shape "
                         f"{tuple(layout.shape)}")
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
    if bq < 1 or bk < 1:
        raise AttnKitError(f"block_size must be >= 1; got {block_size!r}")
    lay = layout.to(torch.bool)
    return BlockSparse(lay if lay.dim() == 3 else lay.unsqueeze(0), int(bq), int(bk))


def padding(lengths: Sequence[int] | Tensor) -> Mask:
    """Key padding by valid lengths ``(B,)``: batch ``b`` attends keys ``j < lengths[b]``.
    ``padding([3, 1])`` with 4 keys renders ``(B, 1, lq, 4)`` rows ``1 1 1 0`` and ``1 0 0 0``."""
    t = torch.as_tensor(lengths)
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise ShapeError(f"padding lengths must be a 1-D integer sequence (B,); got dtype {t.dtype}, "
                         f"shape {tuple(t.shape)}")
    return Padding(t.to(torch.int64))


def from_key_padding(keep: Tensor, *, true_means: Literal["attend", "ignore"] = "attend") -> Mask:
    """Key padding from a boolean ``(B, S)`` tensor. attnkit's convention is True = attend;
    pass ``true_means="ignore"`` for PyTorch's ``key_padding_mask`` convention."""
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.dim() != 2:
        got = f"dtype {keep.dtype}, shape {tuple(keep.shape)}" if isinstance(keep, Tensor) else type(keep).__name__
        raise ShapeError(f"key padding mask must be a bool tensor of shape (B, S); got {got}")
    if true_means not in ("attend", "ignore"):
        raise AttnKitError(f"true_means must be 'attend' or 'ignore'; got {true_means!r}")
    return KeyMask(keep if true_means == "attend" else ~keep)


def from_tensor(mask: Tensor) -> Mask:
    """An explicit boolean mask tensor, ``(lq, lk)``, ``(H, lq, lk)`` or ``(B, H, lq, lk)``,
    True = attend."""
    if not isinstance(mask, Tensor):
        raise DTypeError(f"mask must be an attnkit Mask or a bool tensor; got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise DTypeError(f"mask tensor must have dtype torch.bool (True = attend); got {mask.dtype}. "
                         "Pass additive float biases as bias=...")
    if not 2 <= mask.dim() <= 4:
        raise ShapeError(f"mask tensor must be 2-D to 4-D, broadcastable to (B, H, T, S); got shape "
                         f"{tuple(mask.shape)}")
    return DenseMask(as_4d(mask))


def from_mod(fn: ModFn, name: str = "custom") -> Mask:
    """A mask from a predicate ``fn(b, h, q_idx, kv_idx) -> bool tensor`` over broadcast int64
    index tensors (the FlexAttention ``mask_mod`` signature)."""
    if not callable(fn):
        raise AttnKitError(f"from_mod expects a callable; got {type(fn).__name__}")
    return FromMod(fn, name)


def as_mask(mask: Mask | Tensor | None) -> Mask | None:
    """Normalise what users pass as ``mask=``: a Mask, a bool tensor, or None."""
    if mask is None or isinstance(mask, Mask):
        return mask
    return from_tensor(mask)
