"""A mask seen from one (query piece, key piece) of a sharded problem, evaluated at GLOBAL
positions.

A rank holds queries ``q0 .. q0 + lq - 1`` and, at a ring step, keys ``k0 .. k0 + lk - 1`` of a
global ``T x S`` problem. :func:`region` returns a mask over the local ``lq x lk`` grid whose
``mod(b, h, i, j)`` is the global mask's ``mod(b, h, q0 + i, k0 + j, T, S)``: a causal mask stays
causal across shards, a window keeps its global band, padding lengths count global keys.
Combinations are rebuilt from their shifted parts, so ``&`` / ``|`` / ``~`` keep classifying tiles
part by part. Causal and window bands, padding and key masks classify tiles analytically; any
other mask is classified exactly by evaluating it (one query tile row at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeError
from ..masks import EMPTY, FULL, PARTIAL, And, Causal, Full, KeyMask, Mask, Not, Or, Padding, Window
from ..masks.base import _band_kinds, _offset


@dataclass(frozen=True)
class Region(Mask):
    """``inner`` (a primitive mask of a ``T x S`` problem) on queries ``q0 ..`` and keys ``k0 ..``."""

    inner: Mask
    q0: int
    k0: int
    T: int
    S: int

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.inner.num_batch

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.inner.num_heads

    def validate(self, lq: int, lk: int, batch: int, heads: int) -> None:
        if self.q0 + lq > self.T or self.k0 + lk > self.S:
            raise ShapeError(f"a {lq} x {lk} piece at ({self.q0}, {self.k0}) lies outside the global "
                             f"{self.T} x {self.S} problem")
        self.inner.validate(self.T, self.S, batch, heads)

    def mod(self, b, h, i, j, lq, lk):
        return self.inner.mod(b, h, i + self.q0, j + self.k0, self.T, self.S)

    def key_keep(self, lk: int, device: torch.device | str | None = None) -> Tensor | None:
        keep = self.inner.key_keep(self.S, device)  # (Bm, S)
        return None if keep is None else keep[:, self.k0:self.k0 + lk]

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        m = self.inner
        if isinstance(m, (Causal, Window)):
            lo, hi = (-float("inf"), 0) if isinstance(m, Causal) else (-m.left, m.right)
            off = _offset(m.align, self.T, self.S) + self.q0 - self.k0  # key position of local query 0
            return _band_kinds(lo, hi, off, lq, lk, block_q, block_k, device)
        if isinstance(m, (Padding, KeyMask)):
            keep = self.key_keep(lk, device)
            assert keep is not None
            nk = -(-lk // block_k)
            pad = nk * block_k - lk
            anyk = torch.nn.functional.pad(keep, (0, pad), value=False).view(-1, nk, block_k).any(-1)
            allk = torch.nn.functional.pad(keep, (0, pad), value=True).view(-1, nk, block_k).all(-1)
            kinds = torch.where(allk, FULL, torch.where(anyk, PARTIAL, EMPTY)).to(torch.int8)
            return kinds.view(kinds.shape[0], 1, 1, nk)
        return super().tile_kinds(lq, lk, block_q, block_k, device)

    def __repr__(self) -> str:
        return f"{self.inner!r}[q {self.q0}.., k {self.k0}.. of {self.T}x{self.S}]"


def region(mask: Mask | None, q0: int, k0: int, T: int, S: int) -> Mask | None:
    """``mask`` restricted to queries ``q0 ..`` and keys ``k0 ..`` of a ``T x S`` problem, at
    global positions (None stays None)."""
    if mask is None or isinstance(mask, Full):
        return mask
    if isinstance(mask, (And, Or)):
        return type(mask)(*(region(p, q0, k0, T, S) for p in mask.parts))
    if isinstance(mask, Not):
        return Not(region(mask.parts[0], q0, k0, T, S))
    return Region(mask, q0, k0, T, S)


def piece_kind(mask: Mask | None, lq: int, lk: int) -> int:
    """Whether a whole ``lq x lk`` piece of a region mask is EMPTY, FULL or PARTIAL (for every
    batch element and head)."""
    if mask is None or isinstance(mask, Full):
        return FULL
    if lq == 0 or lk == 0:
        return EMPTY
    kinds = mask.tile_kinds(lq, lk, lq, lk)
    if bool((kinds == EMPTY).all()):
        return EMPTY
    if bool((kinds == FULL).all()):
        return FULL
    return PARTIAL
