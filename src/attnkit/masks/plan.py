"""The tile plan: :class:`BlockMask` (a mask classified into empty / partial / full tiles, in the
form kernels consume), the one bounded memo every tile-based implementation shares
(:func:`tile_plan`), and FlexAttention block masks both ways (:meth:`BlockMask.to_flex`,
:func:`from_flex`)."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import AttnKitError, ShapeError, UnsupportedError
from ..shapes import index_grid
from .base import DEFAULT_BLOCK, EMPTY, FULL, PARTIAL, Full, Mask, ModFn, _Combined, _tile_ranges

__all__ = ["BlockMask", "tile_plan", "memo", "mask_key", "clear_plan_cache", "PLAN_CACHE_SIZE", "PLAN_CACHE_BYTES",
           "FlexMask", "from_flex"]


# ----------------------------------------------------------------------------------------------
# BlockMask: the tile plan, in the form kernels consume
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


def _ordered(flags: Tensor) -> tuple[Tensor, Tensor]:
    """Count ``(..., n)`` and indices ``(..., n, m)`` of the set entries of ``flags (..., n, m)``
    along the last dim: the set ones first, in ascending order (int32, as FlexAttention)."""
    num = flags.sum(-1, dtype=torch.int32)
    idx = torch.argsort(flags.to(torch.uint8), dim=-1, descending=True, stable=True)
    return num, idx.to(torch.int32)


def _unordered(num: Tensor, idx: Tensor, width: int) -> Tensor:
    """Inverse of :func:`_ordered`: bool flags ``(..., n, width)`` from counts and indices."""
    slot = torch.arange(idx.shape[-1], device=idx.device)
    target = torch.where(slot < num.unsqueeze(-1), idx.long(), width)  # unused slots write past the end
    flags = torch.zeros(*idx.shape[:-1], width + 1, dtype=torch.bool, device=idx.device)
    return flags.scatter_(-1, target, True)[..., :width]


@dataclass(frozen=True, eq=False)
class BlockMask:
    """A mask classified into ``(block_q, block_k)`` tiles: the plan every tile-based
    implementation consumes (the form of FlexAttention's ``BlockMask``).

    ``kinds (Bm, Hm, nQ, nK)`` int8 holds :data:`EMPTY`, :data:`PARTIAL` or :data:`FULL` per tile
    (``Bm`` / ``Hm`` are 1 when the mask does not depend on batch / head). From it, computed on
    first use:

    * ``full_kv_num (Bm, Hm, nQ)`` and ``full_kv_indices (Bm, Hm, nQ, nK)``: per query block, how
      many key blocks are full and which (ascending; entries past the count are unspecified);
    * ``partial_kv_num``, ``partial_kv_indices``: the same for partial key blocks (these need
      :meth:`tile_mask`); empty key blocks appear in neither list;
    * ``full_q_num (Bm, Hm, nK)``, ``full_q_indices (Bm, Hm, nK, nQ)``, ``partial_q_num``,
      ``partial_q_indices``: the transpose, per key block its query blocks (for a backward pass
      that walks key blocks).

    The last tile row / column may be shorter than the block when ``lq`` / ``lk`` do not divide.
    ``causal().blocks(8, 8, 4)`` has ``kinds[0, 0] = [[PARTIAL, EMPTY], [FULL, PARTIAL]]``::

        >>> from attnkit import masks
        >>> bm = masks.causal().blocks(8, 8, 4)
        >>> print(bm.to_string())
        +.
        #+
        >>> bm.partial_kv_num[0, 0].tolist(), bm.full_kv_num[0, 0].tolist()
        ([1, 1], [0, 1])

    Build one with :meth:`Mask.blocks` (fresh, exact) or :func:`tile_plan` (memoised, what the
    implementations use); convert with :meth:`to_flex` and :func:`from_flex`.

    Shape legend: Bm / Hm batch / heads of the mask (1 or B / H), nQ = ceil(lq / block_q) query
    blocks, nK = ceil(lk / block_k) key blocks.
    """

    mask: Mask
    kinds: Tensor
    lq: int
    lk: int
    block_q: int
    block_k: int
    _views: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles ``(nQ, nK)``."""
        return self.kinds.shape[-2], self.kinds.shape[-1]

    # -- the kernel form ---------------------------------------------------------------------------
    def _pairs(self, kind: int, transpose: bool) -> tuple[Tensor, Tensor]:
        key = ("pairs", kind, transpose)
        if key not in self._views:
            flags = self.kinds == kind
            self._views[key] = _ordered(flags.transpose(-2, -1) if transpose else flags)
        return self._views[key]

    full_kv_num = property(lambda self: self._pairs(FULL, False)[0], doc="(Bm, Hm, nQ) full key blocks per query block")
    full_kv_indices = property(lambda self: self._pairs(FULL, False)[1], doc="(Bm, Hm, nQ, nK) their indices")
    partial_kv_num = property(lambda self: self._pairs(PARTIAL, False)[0],
                              doc="(Bm, Hm, nQ) partial key blocks per query block")
    partial_kv_indices = property(lambda self: self._pairs(PARTIAL, False)[1], doc="(Bm, Hm, nQ, nK) their indices")
    full_q_num = property(lambda self: self._pairs(FULL, True)[0], doc="(Bm, Hm, nK) full query blocks per key block")
    full_q_indices = property(lambda self: self._pairs(FULL, True)[1], doc="(Bm, Hm, nK, nQ) their indices")
    partial_q_num = property(lambda self: self._pairs(PARTIAL, True)[0],
                             doc="(Bm, Hm, nK) partial query blocks per key block")
    partial_q_indices = property(lambda self: self._pairs(PARTIAL, True)[1], doc="(Bm, Hm, nK, nQ) their indices")

    def derive(self, key: Hashable, make: Callable[[BlockMask], Any]) -> Any:
        """``make(self)``, computed once per ``key`` and kept with this plan: how an implementation
        turns the tiles into its own schedule (chunks of key blocks, packed segments)."""
        if key not in self._views:
            self._views[key] = make(self)
        return self._views[key]

    # -- the tiles' contents -----------------------------------------------------------------------
    def tile_mask(self, tiles: Tensor) -> Tensor:
        """Dense sub-masks ``(n, block_q, block_k)`` of tiles given as ``(n, 4)`` rows (b, h, qi, ki);
        positions past ``lq`` / ``lk`` are False."""
        return _eval_tiles(self.mask, self.lq, self.lk, self.block_q, self.block_k, tiles)

    def region(self, i0: int, i1: int, j0: int, j1: int, device: torch.device | str | None = None) -> Tensor:
        """The mask on queries ``[i0, i1)`` and keys ``[j0, j1)``: bool ``(Bm, Hm, i1 - i0, j1 - j0)``
        (size-1 dims broadcast)."""
        from .data import DenseMask

        m = self.mask
        if isinstance(m, DenseMask):  # slice the stored tensor instead of gathering from it
            t = m.tensor
            rows = slice(i0, i1) if t.shape[2] > 1 else slice(None)
            cols = slice(j0, j1) if t.shape[3] > 1 else slice(None)
            return t[:, :, rows, cols].to(device)
        b, h, i, j = index_grid(m.num_batch, m.num_heads, i0, i1, j0, j1, device)
        return m.mod(b, h, i, j, self.lq, self.lk)

    # -- summaries and renderings ------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Number of empty, partial and full tiles."""
        return {name: int((self.kinds == k).sum()) for name, k in
                (("empty", EMPTY), ("partial", PARTIAL), ("full", FULL))}

    def density(self) -> float:
        """Fraction of tiles that are not empty (what a block-skipping kernel computes)."""
        return float((self.kinds != EMPTY).float().mean()) if self.kinds.numel() else 0.0

    def sparsity(self) -> float:
        """Fraction of tiles that are empty."""
        return 1.0 - self.density()

    def to_dense(self) -> Tensor:
        """Rebuild the element mask ``(Bm, Hm, lq, lk)`` from the tiles (for tests and debugging)."""
        bm, hm, nq, nk = self.kinds.shape
        tiles = torch.zeros(bm, hm, nq, nk, self.block_q, self.block_k, dtype=torch.bool, device=self.kinds.device)
        tiles[self.kinds == FULL] = True
        part = (self.kinds == PARTIAL).nonzero()  # (n, 4)
        if len(part):
            tiles[part[:, 0], part[:, 1], part[:, 2], part[:, 3]] = self.tile_mask(part)
        out = tiles.permute(0, 1, 2, 4, 3, 5).reshape(bm, hm, nq * self.block_q, nk * self.block_k)
        return out[..., : self.lq, : self.lk]

    def to_string(self, b: int = 0, h: int = 0) -> str:
        """ASCII picture of the tiles of batch ``b``, head ``h``: ``#`` full, ``+`` partial, ``.`` empty."""
        sym = {EMPTY: ".", PARTIAL: "+", FULL: "#"}
        rows = self.kinds[min(b, self.kinds.shape[0] - 1), min(h, self.kinds.shape[1] - 1)]
        return "\n".join("".join(sym[int(x)] for x in row) for row in rows.tolist())

    def to(self, device: torch.device | str) -> BlockMask:
        """The same plan with its tensors on ``device``."""
        return BlockMask(self.mask, self.kinds.to(device), self.lq, self.lk, self.block_q, self.block_k)

    def to_flex(self) -> Any:
        """This plan as a ``torch.nn.attention.flex_attention.BlockMask`` (same tiles, the mask's
        ``mask_mod`` for the partial ones), for ``flex_attention(q, k, v, block_mask=...)``."""
        try:
            from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask
        except ImportError as exc:  # torch without FlexAttention
            raise UnsupportedError(f"BlockMask.to_flex needs torch.nn.attention.flex_attention (torch >= 2.5); "
                                   f"this torch is {torch.__version__}") from exc
        return FlexBlockMask.from_kv_blocks(
            self.partial_kv_num.contiguous(), self.partial_kv_indices.contiguous(),
            self.full_kv_num.contiguous(), self.full_kv_indices.contiguous(),
            BLOCK_SIZE=(self.block_q, self.block_k), mask_mod=self.mask.mask_mod(self.lq, self.lk),
            seq_lengths=(self.lq, self.lk))

    def __repr__(self) -> str:
        c = self.counts()
        return (f"BlockMask(lq={self.lq}, lk={self.lk}, block=({self.block_q}, {self.block_k}), "
                f"tiles={self.shape}, full={c['full']}, partial={c['partial']}, empty={c['empty']})")


# ----------------------------------------------------------------------------------------------
# one memo for every tile-based implementation
# ----------------------------------------------------------------------------------------------

PLAN_CACHE_SIZE = 64
"""Entries kept by the shared memo of tile plans (least recently used ones are dropped)."""
PLAN_CACHE_BYTES = 256 * 2**20
"""Most bytes of mask tensors (dense masks, layouts, lengths) the memo keeps alive."""

_MEMO: OrderedDict[Hashable, tuple[Mask, Any, int]] = OrderedDict()  # key -> (mask, value, bytes held)
_MEMO_LOCK = threading.Lock()
_MEMO_BYTES = [0]


def _tensor_bytes(mask: Mask) -> int:
    """Bytes of the tensors a mask (and each of its parts) holds."""
    total = 0
    for leaf in mask.leaves():
        if dataclasses.is_dataclass(leaf):
            total += sum(v.nbytes for f in dataclasses.fields(leaf) if isinstance(v := getattr(leaf, f.name), Tensor))
    return total


def mask_key(mask: Mask) -> Hashable:
    """What identifies ``mask`` in a memo: the mask itself for value-compared masks (frozen
    dataclasses such as ``causal()`` or ``window(64)``, and ``& | ~`` of them, so two equal masks
    share an entry), else its identity (masks holding tensors or functions)."""
    if isinstance(mask, _Combined):
        return (type(mask).__name__, tuple(mask_key(p) for p in mask.parts))
    by_value = (dataclasses.is_dataclass(mask) and type(mask).__eq__ is not object.__eq__
                and type(mask).__hash__ is not None
                and not any(isinstance(getattr(mask, f.name), Tensor) for f in dataclasses.fields(mask)))
    if by_value:
        try:
            hash(mask)
        except TypeError:  # a field that cannot be hashed (a list, say)
            by_value = False
    return ("value", mask) if by_value else ("id", id(mask))


def memo(mask: Mask, what: Hashable, make: Callable[[], Any]) -> Any:
    """``make()``, memoised per ``(mask, what)`` in the one bounded memo of tile plans.

    Entries hold a strong reference to ``mask``, so a mask keyed by identity stays alive while its
    entry does and its ``id`` cannot be reused for another mask meanwhile; the memo keeps at most
    :data:`PLAN_CACHE_SIZE` entries and :data:`PLAN_CACHE_BYTES` of mask tensors alive."""
    key = (mask_key(mask), what)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            return hit[1]
    value = make()
    held = _tensor_bytes(mask)
    with _MEMO_LOCK:
        if key not in _MEMO:
            _MEMO[key] = (mask, value, held)
            _MEMO_BYTES[0] += held
        while len(_MEMO) > PLAN_CACHE_SIZE or (_MEMO_BYTES[0] > PLAN_CACHE_BYTES and len(_MEMO) > 1):
            _MEMO_BYTES[0] -= _MEMO.popitem(last=False)[1][2]
    return value


def clear_plan_cache() -> None:
    """Forget every memoised tile plan (e.g. before timing how long a plan takes to build)."""
    with _MEMO_LOCK:
        _MEMO.clear()
        _MEMO_BYTES[0] = 0


def _refine_pays(mask: Mask) -> bool:
    """Whether evaluating the partial tiles exactly is worth it: for ``& | ~`` of structured masks,
    whose combined classification can call an empty tile partial; not for element-wise masks
    (random, tensors, predicates), where it would evaluate nearly every tile for little."""
    if not isinstance(mask, _Combined):
        return False
    from .data import DenseMask, FromMod, Random

    return not any(isinstance(leaf, (Random, DenseMask, FromMod)) for leaf in mask.leaves())


def tile_plan(mask: Mask | None, lq: int, lk: int, block_q: int = DEFAULT_BLOCK, block_k: int | None = None, *,
              device: torch.device | str | None = None) -> BlockMask:
    """The :class:`BlockMask` of ``mask`` (None: attend everywhere) at these sizes, memoised per
    ``(mask, lq, lk, block_q, block_k, device)`` in one bounded memo shared by every tile-based
    implementation. Combinations of structured masks are refined exactly (see :meth:`Mask.blocks`)."""
    mask = Full() if mask is None else mask
    block_k = block_q if block_k is None else block_k
    dev = torch.device("cpu") if device is None else torch.device(device)
    return memo(mask, ("blocks", lq, lk, block_q, block_k, dev),
                lambda: mask.blocks(lq, lk, block_q, block_k, device=dev, refine=_refine_pays(mask)))


# ----------------------------------------------------------------------------------------------
# FlexAttention block masks as attnkit masks
# ----------------------------------------------------------------------------------------------


def _layout_kinds(kinds: Tensor, cell_q: int, cell_k: int, lq: int, lk: int, bq: int, bk: int,
                  device: torch.device | None) -> Tensor:
    """Kinds of ``(bq, bk)`` tiles from the kinds ``(Bm, Hm, nQc, nKc)`` of ``(cell_q, cell_k)``
    cells: full if every covered cell is full, empty if every covered cell is empty."""
    kinds = kinds.to(device)

    def covered(flags: Tensor) -> Tensor:  # how many flagged cells each tile covers
        integral = torch.nn.functional.pad(flags.to(torch.int64).cumsum(-1).cumsum(-2), (1, 0, 1, 0))
        r0, r1 = _tile_ranges(lq, bq, device)
        c0, c1 = _tile_ranges(lk, bk, device)
        q0, q1 = (r0 // cell_q).view(-1, 1), (r1 // cell_q).view(-1, 1) + 1
        k0, k1 = (c0 // cell_k).view(1, -1), (c1 // cell_k).view(1, -1) + 1
        count = integral[..., q1, k1] - integral[..., q0, k1] - integral[..., q1, k0] + integral[..., q0, k0]
        return count, (q1 - q0) * (k1 - k0)

    n_full, cells = covered(kinds == FULL)
    n_any, _ = covered(kinds != EMPTY)
    return torch.where(n_full == cells, FULL, torch.where(n_any == 0, EMPTY, PARTIAL)).to(torch.int8)


@dataclass(frozen=True, eq=False)
class FlexMask(Mask):
    """A FlexAttention block mask as an attnkit mask: in tile ``(i // block_q, j // block_k)`` a
    full tile attends everywhere, a partial one where ``fn(b, h, q_idx, kv_idx)`` allows, an empty
    one nowhere. ``kinds (Bm, Hm, nQ, nK)`` int8. Made by :func:`from_flex`."""

    kinds: Tensor
    block_q: int
    block_k: int
    fn: ModFn

    num_batch = property(lambda self: self.kinds.shape[0])  # type: ignore[assignment]
    num_heads = property(lambda self: self.kinds.shape[1])  # type: ignore[assignment]

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        nq, nk = self.kinds.shape[-2:]
        if nq * self.block_q < lq or nk * self.block_k < lk:
            raise ShapeError(f"flex block mask of {nq} x {nk} tiles of ({self.block_q}, {self.block_k}) covers "
                             f"({nq * self.block_q}, {nk * self.block_k}) positions; the problem needs ({lq}, {lk})")

    def mod(self, b, h, i, j, lq, lk):
        kinds = self.kinds.to(i.device)
        bb = b if kinds.shape[0] > 1 else torch.zeros_like(b)
        hh = h if kinds.shape[1] > 1 else torch.zeros_like(h)
        kind = kinds[bb, hh, i // self.block_q, j // self.block_k]
        inner = torch.as_tensor(self.fn(b, h, i, j), dtype=torch.bool, device=i.device)
        return (kind == FULL) | ((kind == PARTIAL) & inner)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
        if (block_q, block_k) == (self.block_q, self.block_k):
            return self.kinds[..., :nq, :nk].to(device)
        return _layout_kinds(self.kinds, self.block_q, self.block_k, lq, lk, block_q, block_k, device)


def from_flex(block_mask: Any) -> BlockMask:
    """A ``torch.nn.attention.flex_attention.BlockMask`` as an attnkit :class:`BlockMask` (the
    inverse of :meth:`BlockMask.to_flex`). Its ``.mask`` is a :class:`FlexMask` that any
    implementation runs (``attention(q, k, v, from_flex(bm).mask)``; passing the BlockMask itself
    as ``mask=`` does the same)."""
    for name in ("kv_num_blocks", "kv_indices", "BLOCK_SIZE", "seq_lengths", "mask_mod"):
        if not hasattr(block_mask, name):
            raise AttnKitError(f"from_flex expects a torch.nn.attention.flex_attention.BlockMask; got "
                               f"{type(block_mask).__name__} without {name!r}")
    bq, bk = (int(x) for x in block_mask.BLOCK_SIZE)
    lq, lk = (int(x) for x in block_mask.seq_lengths)
    width = block_mask.kv_indices.shape[-1]
    partial = _unordered(block_mask.kv_num_blocks, block_mask.kv_indices, width)
    full = torch.zeros_like(partial)
    if block_mask.full_kv_num_blocks is not None:
        full = _unordered(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, width)
    kinds = torch.where(full, FULL, torch.where(partial, PARTIAL, EMPTY)).to(torch.int8).cpu()
    kinds = kinds.reshape((1,) * (4 - kinds.dim()) + tuple(kinds.shape))  # (Bm, Hm, nQ, nK)
    kinds = kinds[..., : math.ceil(lq / bq), : math.ceil(lk / bk)].contiguous()
    mask = FlexMask(kinds, bq, bk, block_mask.mask_mod)
    return BlockMask(mask, kinds, lq, lk, bq, bk)
