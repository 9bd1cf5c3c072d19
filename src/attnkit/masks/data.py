"""Masks that come from data: padding lengths, key masks, dense boolean tensors, block layouts,
seeded random patterns and user predicates (``mask_mod`` functions)."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import AttnKitError, DTypeError, ShapeError
from ..shapes import as_4d, index_broadcast
from .base import EMPTY, FULL, PARTIAL, Mask, ModFn, _tile_ranges

_MIX1, _MIX2 = -4658895280553007687, -7723592293110705685  # splitmix64 constants as int64


def _hash_uniform(seed: int, i: Tensor, j: Tensor) -> Tensor:
    """A deterministic uniform [0, 1) number per (seed, i, j): splitmix64 on int64 tensors."""
    mixed = (seed * 0x27D4EB2F165667C5) % (1 << 64)  # the seed's term, wrapped to int64 in Python
    x = i * 0x9E3779B1 + j * 0x85EBCA77 + (mixed - (1 << 64) if mixed >= (1 << 63) else mixed)
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * _MIX1
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * _MIX2
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return ((x >> 11) & ((1 << 53) - 1)).double() / float(1 << 53)


def _int(what: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int (not a bool, not a float), ``>= minimum`` when given; else AttnKitError."""
    try:
        n = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = None
    if n is None or (minimum is not None and n < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise AttnKitError(f"{what} must be an int{bound}; got {value!r}")
    return n


@dataclass(frozen=True)
class Random(Mask):
    """Each (query, key) pair kept independently with probability ``density`` (seeded hash)."""

    density: float
    seed: int = 0

    def __post_init__(self):
        d = self.density
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d <= 1.0:
            raise AttnKitError(f"random mask density must be a number in [0, 1]; got {d!r}")
        object.__setattr__(self, "density", float(d))
        object.__setattr__(self, "seed", _int("random mask seed", self.seed))

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

    lengths: Tensor  # (B,) int64, each >= 0

    def __post_init__(self):
        t = self.lengths
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise DTypeError(f"padding lengths must be integers (valid keys per batch element, (B,)); got {got}")
        if t.dim() != 1 or len(t) == 0:
            raise ShapeError(f"padding lengths must be a 1-D integer sequence (B,) with B >= 1; got shape "
                             f"{tuple(t.shape)}")
        if bool((t < 0).any()):
            raise AttnKitError(f"padding lengths must be >= 0; got {t.tolist()}")
        object.__setattr__(self, "lengths", t.to(torch.int64))

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.lengths.shape[0]

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        if torch.compiler.is_compiling():  # reading the lengths would break the graph; checked eagerly
            return
        if len(self.lengths) and (int(self.lengths.max()) > lk or int(self.lengths.min()) < 0):
            raise ShapeError(f"padding lengths must be in [0, {lk}] (the key length); got "
                             f"{self.lengths.tolist()}")

    def mod(self, b, h, i, j, lq, lk):
        return j < self.lengths.to(j.device)[b]

    def key_keep(self, lk, device=None):
        return torch.arange(lk, device=device).view(1, -1) < self.lengths.to(device).view(-1, 1)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        c0, c1 = _tile_ranges(lk, block_k, device)
        n = self.lengths.to(device).view(-1, 1)
        kinds = torch.where(c1.view(1, -1) < n, FULL, torch.where(c0.view(1, -1) >= n, EMPTY, PARTIAL))
        return kinds.to(torch.int8).view(-1, 1, 1, kinds.shape[-1])


@dataclass(frozen=True, eq=False)
class KeyMask(Mask):
    """Key padding from a boolean tensor ``keep`` of shape ``(B, S)``, True = attend that key."""

    keep: Tensor  # (B, S) bool

    def __post_init__(self):
        keep = self.keep
        if not isinstance(keep, Tensor):
            raise DTypeError(f"key padding mask must be a bool tensor of shape (B, S); got {type(keep).__name__}")
        if keep.dtype != torch.bool:
            raise DTypeError(f"key padding mask must be a bool tensor of shape (B, S); got dtype {keep.dtype} "
                             "(for a 0/1 tensor with 1 = attend, pass keep.bool())")
        if keep.dim() != 2:
            raise ShapeError(f"key padding mask must be a bool tensor of shape (B, S); got shape {tuple(keep.shape)}")

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.keep.shape[0]

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        if self.keep.shape[-1] != lk:
            raise ShapeError(f"key padding mask has shape {tuple(self.keep.shape)}; expected (B, {lk})")

    def mod(self, b, h, i, j, lq, lk):
        return self.keep.to(j.device)[b, j]

    def key_keep(self, lk, device=None):
        return self.keep.to(device)

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

    def key_keep(self, lk, device=None):
        t = self.tensor
        if t.shape[1] != 1 or t.shape[2] != 1:  # depends on the head or the query: not key-side
            return None
        return t[:, 0, 0, :].to(device).expand(t.shape[0], lk)

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
    """A user predicate ``fn(b, h, q_idx, kv_idx) -> bool tensor`` (FlexAttention ``mask_mod``),
    evaluated for ``batch`` batch elements and ``heads`` heads (1: the same for all of them)."""

    fn: ModFn
    name: str = "custom"
    batch: int = 1
    heads: int = 1

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.batch

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.heads

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        if torch.compiler.is_compiling() or (self.batch, self.heads) == (batch, heads):
            return
        # a predicate declared batch/head-independent must not read b or h: probe a strided sample
        # of positions for every batch element and head and refuse if the answers differ
        i = torch.linspace(0, lq - 1, min(lq, 48)).round().long().view(1, 1, -1, 1)
        j = torch.linspace(0, lk - 1, min(lk, 48)).round().long().view(1, 1, 1, -1)
        b = torch.arange(batch if self.batch == 1 else 1).view(-1, 1, 1, 1)
        h = torch.arange(heads if self.heads == 1 else 1).view(1, -1, 1, 1)
        try:
            grid = self.fn(b, h, i, j).expand(b.shape[0], h.shape[1], i.shape[2], j.shape[3])
        except (IndexError, RuntimeError) as exc:
            raise ShapeError(f"mask_mod {self.name!r} fails for batch {batch} x heads {heads} ({exc}); declare "
                             f"the sizes it covers with masks.from_mod(fn, batch=..., heads=...)") from exc
        for dim, what, size in ((0, "b (the batch index)", "batch"), (1, "h (the head index)", "heads")):
            if grid.shape[dim] > 1 and not bool((grid == grid.narrow(dim, 0, 1)).all()):
                raise ShapeError(f"mask_mod {self.name!r} depends on {what} but was declared the same for every "
                                 f"one; pass masks.from_mod(fn, {size}=...) so it is evaluated for each")

    def mod(self, b, h, i, j, lq, lk):
        return self.fn(b, h, i, j)



def random(density: float, seed: int = 0) -> Mask:
    """Each (query, key) pair kept with probability ``density`` (a number in [0, 1]), from a
    counter-based hash of ``(seed, i, j)`` (``seed`` an int): the same seed gives the same mask
    at any size, tile by tile."""
    return Random(density, seed)


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
    pair = block_size if isinstance(block_size, (tuple, list)) else (block_size, block_size)
    if len(pair) != 2:
        raise AttnKitError(f"block_size must be an int or (block_q, block_k); got {block_size!r}")
    bq, bk = (_int("block_sparse block_size", b, minimum=1) for b in pair)
    lay = layout.to(torch.bool)
    return BlockSparse(lay if lay.dim() == 3 else lay.unsqueeze(0), bq, bk)


def padding(lengths: Sequence[int] | Tensor) -> Mask:
    """Key padding by valid lengths ``(B,)`` (non-negative ints): batch ``b`` attends keys
    ``j < lengths[b]``. ``padding([3, 1])`` with 4 keys renders ``(B, 1, lq, 4)`` rows
    ``1 1 1 0`` and ``1 0 0 0``."""
    try:
        t = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError) as err:
        raise AttnKitError(f"padding lengths must be a 1-D integer sequence (B,); got {lengths!r:.80}") from err
    if t.dim() != 1 or len(t) == 0:
        raise ShapeError(f"padding lengths must be a 1-D integer sequence (B,) with B >= 1; got shape "
                         f"{tuple(t.shape)}")
    return Padding(t)


def from_key_padding(keep: Tensor, *, true_means: Literal["attend", "ignore"] = "attend") -> Mask:
    """Key padding from a boolean ``(B, S)`` tensor. attnkit's convention is True = attend;
    pass ``true_means="ignore"`` for PyTorch's ``key_padding_mask`` convention."""
    if true_means not in ("attend", "ignore"):
        raise AttnKitError(f"true_means must be 'attend' or 'ignore'; got {true_means!r}")
    mask = KeyMask(keep)  # checks dtype and shape
    return mask if true_means == "attend" else KeyMask(~keep)


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


def from_mod(fn: ModFn, name: str = "custom", *, batch: int = 1, heads: int = 1) -> Mask:
    """A mask from a predicate ``fn(b, h, q_idx, kv_idx) -> bool tensor`` over broadcast int64
    index tensors (the FlexAttention ``mask_mod`` signature). A predicate that reads ``b`` or ``h``
    (a per-sequence document mask, a per-head pattern) declares how many it covers with ``batch`` /
    ``heads``, as FlexAttention's ``create_block_mask(B=, H=)`` does; one that reads them while
    declared batch- and head-independent is refused when the call is checked."""
    if not callable(fn):
        raise AttnKitError(f"from_mod expects a callable; got {type(fn).__name__}")
    for arg, val in (("batch", batch), ("heads", heads)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise AttnKitError(f"from_mod {arg} must be an int >= 1; got {val!r}")
    return FromMod(fn, name, batch, heads)
