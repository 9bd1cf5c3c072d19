"""Every hash round of LSH attention on the native kernel: the sorted items as one tile-sparse
problem (chunk ``c`` attends chunks ``c - 1`` and ``c``), the pair rules in the kernel's ``hashed``
score modifier, the rounds merged by their log-sum-exp."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ...kernels.tiles import HashedItems, KernelMod, tile_attention
from ...masks import And, BlockSparse, Causal, Full, KeyMask, Mask, Padding
from ...merge import merge_partials
from .items import _Items, _slots

__all__ = ["kernel_mask", "rounds_on_kernel"]


def kernel_mask(mask: Mask | None, lq: int, lk: int) -> tuple[int | None, Mask | None] | None:
    """What the kernel's ``hashed`` modifier evaluates of ``mask``: ``(causal offset or None, the
    key-side part or None)``, or None when ``mask`` has a part it cannot evaluate (then the
    rounds run in PyTorch). Takes ``Full``, ``Causal``, ``Padding``, ``KeyMask`` and their ``&``."""
    if mask is None:
        return None, None
    offset, keys = None, []
    todo = [mask]
    while todo:
        part = todo.pop()
        if isinstance(part, And):
            todo.extend(part.parts)
        elif isinstance(part, Causal):
            o = part.offset(lq, lk)
            offset = o if offset is None else min(offset, o)
        elif isinstance(part, (Padding, KeyMask)):
            keys.append(part)
        elif not isinstance(part, Full):
            return None
    return offset, (None if not keys else keys[0] if len(keys) == 1 else And(*keys))


@functools.lru_cache(maxsize=32)
def _look_one_back_mask(n_chunks: int, chunk: int) -> BlockSparse:
    """The tiles of one round in sorted order: chunk ``c`` attends chunks ``c - 1`` (cyclically)
    and ``c``; one mask object per size, so its kernel plan is built once."""
    eye = torch.eye(n_chunks, dtype=torch.bool)
    return BlockSparse((eye | eye.roll(-1, dims=1)).unsqueeze(0), chunk, chunk)  # (1, nC, nC)


def rounds_on_kernel(items: _Items, orders: Tensor, ranks: Tensor, chunk_of: Tensor | None,
                      kernel_mask: tuple[int | None, Mask | None], b: int, h: int, t: int, n_keys: int, chunk: int,
                      scale: float, shared: bool) -> tuple[Tensor, Tensor]:
    """Every hash round as tile attention over its sorted items (the look-one-back tiles), with the
    pair rules (query / key, causal, self score, duplicate counts) in the kernel's ``hashed``
    modifier; the rounds merged by their log-sum-exp. Returns ``out (B, H, T, Dv)`` and
    ``lse (B, H, T)``.

    ``orders (BH, R, nC*C)`` sorted item ids (dummy N past the end), ``ranks (BH, R, N)`` sorted
    slot of each item, ``chunk_of (BH, R, N+1)`` chunk of each item per round (None: no dedup)."""
    bh, n_rounds, slots = orders.shape
    n_chunks = slots // chunk
    dv = items.vv.shape[-1]
    causal_offset, key_side = kernel_mask
    qpos = items.qpos.expand(bh, -1)  # (BH, N+1)
    kpos = items.kpos.expand(bh, -1)
    if key_side is not None:  # keys hidden from every query of a batch element: not keys there
        keep = key_side.key_keep(n_keys, device=kpos.device).expand(b, -1).repeat_interleave(h, dim=0)  # (BH, S)
        kpos = torch.where((kpos >= 0) & keep.gather(1, kpos.clamp(min=0)), kpos, -1)
    qv, kv, vv = (x.reshape(-1, x.shape[-1]) for x in (items.qv, items.kv, items.vv))  # (BH*(N+1), E)
    base = _slots(bh, items.n + 1, orders.device)  # (BH, 1)
    tiles = _look_one_back_mask(n_chunks, chunk)
    parts = []
    for r in range(n_rounds):
        order = orders[:, r]  # (BH, nC*C)
        rows = (order + base).flatten()
        ids = [qpos.gather(1, order), kpos.gather(1, order)]  # (BH, nC*C) each
        if chunk_of is not None and n_rounds > 1:
            others = torch.cat([chunk_of[:, :r], chunk_of[:, r + 1:]], dim=1)  # (BH, R-1, N+1)
            ids.extend(others.gather(2, order.unsqueeze(1).expand(-1, n_rounds - 1, -1)).unbind(1))
        hashed = HashedItems(torch.stack(ids, 1).view(b, h, len(ids), slots).int(), n_chunks, causal_offset, shared)
        qs, ks, vs = (x.index_select(0, rows).view(b, h, slots, -1) for x in (qv, kv, vv))  # (B, H, nC*C, E)
        out, lse = tile_attention(qs, ks, vs, tiles, scale, chunk, chunk, mods=[KernelMod("hashed", hashed)])
        back = (ranks[:, r, :t] + _slots(bh, slots, orders.device)).flatten()  # sorted slot of each query
        parts.append((out.reshape(-1, dv).index_select(0, back).view(b, h, t, dv),
                      lse.reshape(-1).index_select(0, back).view(b, h, t)))
    return merge_partials(parts)
