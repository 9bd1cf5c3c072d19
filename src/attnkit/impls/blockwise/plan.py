"""The schedule of ``blockwise``: which key chunks every block of query rows visits, a view of the
shared tile plan (runs of tiles of one kind merged into chunks of at most ``chunk_k`` keys)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...masks import EMPTY, FULL, PARTIAL, Mask
from ...masks.base import DEFAULT_BLOCK
from ...masks.plan import BlockMask, tile_plan
from ...scores import ScoreMod

DEFAULT_ROWS = 2 * DEFAULT_BLOCK  # query rows per step: two rows of tiles (fewer, larger matmuls measured
# faster than one row, while the key tile size matters little here; docs/blockwise.md)
DEFAULT_CHUNK_K = 1024  # keys one matmul covers at most (runs of tiles of one kind are merged up to it)

Chunk = tuple[int, int, bool]  # key range [j0, j1) and whether it needs the mask


# ----------------------------------------------------------------------------------------------
# the schedule: which key chunks every query block visits (a view of the shared tile plan)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Per query block its chunks, the widest chunk and the number of tiles they cover."""

    rows: tuple[tuple[Chunk, ...], ...]
    widest: int
    tiles: int


def _row_chunks(kinds_row: list[int], lk: int, block_k: int, chunk_k: int) -> tuple[Chunk, ...]:
    """Merge consecutive non-empty tiles of the same kind into chunks of at most ``chunk_k`` keys."""
    per_chunk = max(1, chunk_k // block_k)
    chunks: list[Chunk] = []
    start, run_kind, n = None, None, 0
    for ki, kind in enumerate([*kinds_row, EMPTY]):
        if start is not None and (kind != run_kind or n == per_chunk):
            chunks.append((start * block_k, min(lk, ki * block_k), run_kind != FULL))
            start = None
        if kind != EMPTY and start is None:
            start, run_kind, n = ki, kind, 0
        n += 1
    return tuple(chunks)


def _rows(bm: BlockMask, group: int, chunk_k: int) -> _Rows:
    """The chunks of one loop shared by every batch element and head, stepping ``group`` rows of
    tiles at a time: a tile is skipped only if empty for all of them (every batch element, head
    and row of the group) and runs unmasked only if full for all of them."""
    any_kind = (bm.kinds != EMPTY).flatten(0, 1).any(0)  # (nQ, nK)
    all_full = (bm.kinds == FULL).flatten(0, 1).all(0)  # (nQ, nK)
    if group > 1:  # rows past the last query are padding: neither keep a tile nor spoil a full one
        pad = (-any_kind.shape[0]) % group
        any_kind = torch.cat([any_kind, any_kind.new_zeros(pad, any_kind.shape[1])]).view(-1, group,
                                                                                           any_kind.shape[1]).any(1)
        all_full = torch.cat([all_full, all_full.new_ones(pad, all_full.shape[1])]).view(-1, group,
                                                                                        all_full.shape[1]).all(1)
    kinds = torch.where(all_full, FULL, torch.where(any_kind, PARTIAL, EMPTY))
    rows = tuple(_row_chunks(r, bm.lk, bm.block_k, chunk_k) for r in kinds.tolist())
    widest = max((j1 - j0 for row in rows for j0, j1, _ in row), default=1)
    tiles = sum((j1 - j0 + bm.block_k - 1) // bm.block_k for row in rows for j0, j1, _ in row)
    return _Rows(rows, widest, tiles)


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """The work of one call: the tile plan and, per query block, its key chunks.

    ``rows[qi]`` lists ``(j0, j1, masked)`` chunks of query block ``qi`` (rows
    ``qi * block_q`` to ``(qi + 1) * block_q``, a whole number of the plan's tile rows); empty
    tiles appear in no chunk.
    """

    blocks: BlockMask
    block_q: int  # query rows per step
    chunk_k: int
    rows: tuple[tuple[Chunk, ...], ...]
    widest_chunk: int  # the most keys any chunk covers (the size of the tile buffers)
    tiles: int
    mods: tuple[ScoreMod, ...]
    weight: str  # "softmax" | "sigmoid"

    lq = property(lambda self: self.blocks.lq)
    lk = property(lambda self: self.blocks.lk)
    block_k = property(lambda self: self.blocks.block_k)

    @property
    def grad_mods(self) -> bool:
        """Whether a modifier is not a pure bias (its derivative is needed in the backward)."""
        return any(not m.additive for m in self.mods)

    def tiles_visited(self) -> int:
        """Number of ``(block_q, block_k)`` tiles computed (empty tiles are not)."""
        return self.tiles


def plan_blocks(lq: int, lk: int, mask: Mask | None, *, block_q: int = DEFAULT_ROWS,
                block_k: int = DEFAULT_BLOCK, chunk_k: int = DEFAULT_CHUNK_K,
                mods: tuple[ScoreMod, ...] = (), weight: str = "softmax") -> BlockPlan:
    """The plan of a call: the shared tile plan of ``mask`` (tiles of ``DEFAULT_BLOCK`` query rows
    when ``block_q`` is a multiple of it, else of ``block_q``) and its chunks, both memoised."""
    tile_q = DEFAULT_BLOCK if block_q % DEFAULT_BLOCK == 0 else block_q
    bm = tile_plan(mask, lq, lk, tile_q, block_k)
    r = bm.derive(("blockwise", block_q, chunk_k), lambda b: _rows(b, block_q // tile_q, chunk_k))
    return BlockPlan(bm, block_q, chunk_k, r.rows, r.widest, r.tiles, mods, weight)
