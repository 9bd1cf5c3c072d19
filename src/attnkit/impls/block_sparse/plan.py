"""The plan of ``block_sparse``: the kept tiles of each mask slice, packed into segments of at
most ``C`` tiles per query-block row.

Shape legend: nQ / nK query / key blocks, nS segments, C tiles per segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...masks import EMPTY, FULL, PARTIAL, Mask
from ...masks.base import DEFAULT_BLOCK
from ...masks.plan import BlockMask, tile_plan

MAX_SEG_TILES = 64  # at most this many tiles per segment

@dataclass(frozen=True, eq=False)
class SlicePlan:
    """The kept tiles of one mask slice (one batch/head of a batch/head-dependent mask, or all).

    ``seg_q (nS,)`` query block of each segment; ``seg_k (nS, C)`` its key blocks (padding slots read
    block 0, fully masked); ``seg_lib (nS, C)`` index into ``blocked (L, block_q, block_k)``, where
    True = masked out (entry 0: all masked, 1: none masked); ``masked (nS,)`` whether a segment
    needs any masking; ``band (nS,)`` whether a segment reads ``C`` consecutive key blocks
    (then a strided view replaces the gather); ``dead (nS,)`` whether a segment may hold a query
    row with no allowed key; ``single`` whether every query block has exactly one segment.
    """

    seg_q: Tensor
    seg_k: Tensor
    seg_lib: Tensor
    blocked: Tensor
    masked: Tensor
    band: Tensor
    dead: Tensor
    single: bool
    n_q: int
    n_k: int
    tiles: int  # kept tiles
    full_tiles: int

    @property
    def slots(self) -> int:
        """Tiles per segment ``C``."""
        return self.seg_k.shape[1]


def _tile_sizes_valid(lq: int, lk: int, bq: int, bk: int) -> Tensor:
    """``(bq, bk)`` bool: positions of the last-column tile that lie before ``lk``."""
    j = torch.arange(bk).view(1, bk)
    rem = lk - (math.ceil(lk / bk) - 1) * bk
    return (j < rem).expand(bq, bk)


def _segments(qi: Tensor, n_q: int, cap: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Pack tiles sorted by query block ``qi (n,)`` into segments of at most ``C`` tiles.

    Returns the segment and slot of each tile, ``seg_q (nS,)`` and ``C``."""
    counts = torch.bincount(qi, minlength=n_q)  # (nQ,)
    live = counts[counts > 0].float()
    if len(live) == 0:
        return qi.new_zeros(0), qi.new_zeros(0), qi.new_zeros(0), 1
    c = int(min(int(counts.max()), max(1, math.ceil(float(torch.quantile(live, 0.9)))), cap))
    starts = torch.cumsum(counts, 0) - counts  # (nQ,) first tile of each row
    pos = torch.arange(len(qi)) - starts[qi]  # (n,) position within the row
    nseg = (counts + c - 1) // c  # (nQ,)
    seg_start = torch.cumsum(nseg, 0) - nseg
    seg = seg_start[qi] + pos // c
    seg_q = torch.repeat_interleave(torch.arange(n_q), nseg)
    return seg, pos % c, seg_q, c


def build_plan(bm: BlockMask, b: int, h: int) -> SlicePlan:
    """The plan of slice ``(b, h)`` of the tile plan ``bm`` (kinds ``(Bm, Hm, nQ, nK)``): partial
    tiles are evaluated once (their sub-masks become the ``blocked`` library), empty ones dropped."""
    lq, lk, bq, bk = bm.lq, bm.lk, bm.block_q, bm.block_k
    n_q, n_k = bm.shape
    k2 = bm.kinds[b, h]
    tiles = (k2 != EMPTY).nonzero()  # (n, 2) rows (qi, ki), sorted by qi then ki
    kind = k2[tiles[:, 0], tiles[:, 1]]
    lib_id = torch.ones(len(tiles), dtype=torch.int64)  # 1: nothing masked
    edge = _tile_sizes_valid(lq, lk, bq, bk)
    library = [torch.ones(1, bq, bk, dtype=torch.bool), torch.zeros(1, bq, bk, dtype=torch.bool)]
    if lk % bk:  # the last key block of a full tile row still stops at lk
        library.append((~edge).unsqueeze(0))
        lib_id[(tiles[:, 1] == n_k - 1) & (kind == FULL)] = 2
    part = (kind == PARTIAL).nonzero().flatten()
    keep = torch.ones(len(tiles), dtype=torch.bool)
    if len(part):
        rows = torch.stack([torch.full_like(part, b), torch.full_like(part, h),
                            tiles[part, 0], tiles[part, 1]], 1)  # (nP, 4)
        sub = bm.tile_mask(rows)  # (nP, bq, bk) True = attend
        keep[part[~sub.flatten(1).any(-1)]] = False  # partial by bounds, empty in fact
        lib_id[part] = sum(len(x) for x in library) + torch.arange(len(part))
        library.append(~sub)
    tiles, lib_id = tiles[keep], lib_id[keep]
    seg, slot, seg_q, c = _segments(tiles[:, 0], n_q, MAX_SEG_TILES)
    n_s = len(seg_q)
    seg_k = torch.zeros((n_s, c), dtype=torch.int64)  # padding slots read block 0, fully masked
    seg_lib = torch.zeros((n_s, c), dtype=torch.int64)
    seg_k[seg, slot] = tiles[:, 1]
    seg_lib[seg, slot] = lib_id
    # a "band" segment reads C consecutive key blocks: no gather needed, a strided view will do
    band = (seg_lib != 0).all(-1) & (seg_k == seg_k[:, :1] + torch.arange(c)).all(-1)
    # segments with padding slots (short rows) go last, so they share chunks
    seg_order = torch.argsort((~band).to(torch.int64) * n_s + torch.arange(n_s))
    seg_q, seg_k, seg_lib, band = seg_q[seg_order], seg_k[seg_order], seg_lib[seg_order], band[seg_order]
    blocked = torch.cat(library)
    row_alive = (~blocked).any(-1)  # (L, bq) rows of each library entry that keep a key
    dead = ~row_alive[seg_lib].any(1).all(-1) if n_s else torch.zeros(0, dtype=torch.bool)  # (nS,)
    single = n_s == n_q and bool((torch.bincount(seg_q, minlength=n_q) == 1).all())
    return SlicePlan(seg_q, seg_k, seg_lib, blocked, (seg_lib != 1).any(-1), band, dead, single, n_q, n_k,
                     len(tiles), int((lib_id == 1).sum()))


def _slice_plans(bm: BlockMask) -> list[list[SlicePlan]]:
    return [[build_plan(bm, b, h) for h in range(bm.kinds.shape[1])] for b in range(bm.kinds.shape[0])]


def plan_for(mask: Mask | None, lq: int, lk: int, bq: int = DEFAULT_BLOCK,
             bk: int = DEFAULT_BLOCK) -> list[list[SlicePlan]]:
    """Plans ``[bm][hm]`` for every slice of ``mask``: a view of the shared tile plan
    (:func:`attnkit.masks.plan.tile_plan`), derived once and kept with it."""
    return tile_plan(mask, lq, lk, bq, bk).derive(("block_sparse",), _slice_plans)
