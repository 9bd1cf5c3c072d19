"""The tile plan in the Triton kernels' form, and the differentiable call of those kernels.

:class:`TritonPlan` is derived once from a :class:`~attnkit.masks.plan.BlockMask` (and kept with
it, so the memoised plan serves every later call): per query block its full and partial key
blocks, per key block its full and partial query blocks (the transposes, for the backward), the
sub-masks of the partial tiles as ``uint8 (L, bq, bk)`` with, for each listed partial tile, its
index into them. :func:`look_one_back_plan` builds the plan of an LSH round instead: chunk ``c``
attends chunks ``c - 1`` (cyclically) and ``c``, every tile "partial", masked by the ``hashed``
pair rules. :func:`plan_attention` runs forward and backward over a plan and returns
``(out, lse)``.

This module imports Triton only inside the functions that launch kernels, so the plan can be
built (and tested) where Triton is missing.

Shape legend: Bm / Hm batch / heads of the mask (1 or B / H), nQ / nK query / key blocks.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import NamedTuple

import torch
from torch import Tensor

from ..masks import PARTIAL, Mask
from ..masks.plan import BlockMask, tile_plan

__all__ = ["TritonPlan", "HashedIds", "triton_plan", "look_one_back_plan", "plan_attention", "tile_weights",
           "triton_reason", "triton_unavailable", "interpreting", "TILE_SIZES"]

TILE_SIZES = (16, 32, 64, 128, 256)  # tile sides the kernels take (tl.dot needs powers of two >= 16)


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``, on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "needs the optional package triton (pip install 'attnkit[gpu]')"
    return None


def triton_unavailable() -> str | None:
    """Why the Triton kernels cannot run in this process at all (None: they can): triton is not
    installed, or there is no CUDA device and Triton's interpreter is off."""
    if why := _triton_missing():
        return why
    if not torch.cuda.is_available() and not interpreting():
        return "no CUDA device here (Triton kernels run on CUDA; on CPU only under TRITON_INTERPRET=1, for tests)"
    return None


def triton_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None: they can): triton missing, or a
    device other than CUDA (a CPU tensor runs only under Triton's interpreter, for tests)."""
    if why := _triton_missing():
        return why
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return (f"Triton kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests); "
            f"got device {device.type}")


class HashedIds(NamedTuple):
    """What the ``hashed`` mode reads per sorted item (as the native kernel's ``HashedItems``):
    ``ids (B', H, 2 + R', N)`` int32 (query position, key position, the item's chunk in each of
    the ``R'`` other rounds), ``n_chunks`` per round, ``causal_offset`` (None: not causal) and
    ``shared`` (shared-QK: an item's score with itself is the constant -1e5). With ``rows`` the
    kernels read q, k and v as the unsorted items through the sort order and write each round's
    output at its queries' rows (``n_queries`` of them)."""

    ids: Tensor
    n_chunks: int
    causal_offset: int | None
    shared: bool
    rows: Tensor | None = None  # (B', H, N) int32: the item row of each sorted slot (None: rows are sorted copies)
    n_queries: int = 0  # with rows: queries per round, the output's rows


class TritonPlan:
    """The lists the kernels walk (int32, on the inputs' device).

    ``kv_lists``: ``(full_num (Bm, Hm, nQ), full_idx (Bm, Hm, nQ, nK), part_num, part_idx,
    part_lib)``; ``q_lists``: the same per key block. ``sub (L, bm, bn)`` uint8 sub-masks (1 =
    attend); ``kinds (Bm, Hm, nQ, nK)`` int8 and ``lib`` the sub-mask index of every tile (for the
    weights kernel)."""

    def __init__(self, bm: int, bn: int, kv_lists: tuple[Tensor, ...], q_lists: tuple[Tensor, ...], sub: Tensor,
                 kinds: Tensor | None = None, lib: Tensor | None = None):
        self.bm, self.bn = bm, bn
        self.kv_lists, self.q_lists, self.sub = kv_lists, q_lists, sub
        self.kinds, self.lib = kinds, lib

    @staticmethod
    def strides(num: Tensor, idx: Tensor) -> tuple[int, int, int, int, int]:
        """``(s_nb, s_nh, s_ib, s_ih, s_iq)``: a broadcast mask dim (size 1) has stride 0."""
        bcast = lambda t, d: 0 if t.shape[d] == 1 else t.stride(d)  # noqa: E731
        return bcast(num, 0), bcast(num, 1), bcast(idx, 0), bcast(idx, 1), idx.stride(2)

    @functools.cached_property
    def imbalance(self) -> float:
        """Kept tiles of the busiest query block over the mean of the non-empty ones (1: even)."""
        per_block = (self.kv_lists[0] + self.kv_lists[2]).float()  # (Bm, Hm, nQ)
        busy = per_block[per_block > 0]
        return float(busy.max() / busy.mean()) if busy.numel() else 1.0

    @property
    def tiles(self) -> int:
        """Kept tiles (full + partial) over all mask slices."""
        return int(self.kv_lists[0].sum() + self.kv_lists[2].sum())


def _from_blocks(bm: BlockMask) -> TritonPlan:
    kinds = bm.kinds
    dev = kinds.device
    part = (kinds == PARTIAL).nonzero()  # (L, 4) b, h, qi, ki
    lib = torch.full(kinds.shape, -1, dtype=torch.int32, device=dev)
    if len(part):
        # one copy of each distinct sub-mask (a causal diagonal or a window's edges repeat), so the
        # kernels read a few cached patterns instead of one per tile
        flat = bm.tile_mask(part).to(torch.uint8).flatten(1)
        sub, which = torch.unique(flat, dim=0, return_inverse=True)
        sub = sub.view(-1, bm.block_q, bm.block_k).contiguous()
        lib[tuple(part.unbind(1))] = which.to(torch.int32)
    else:
        sub = torch.zeros(1, bm.block_q, bm.block_k, dtype=torch.uint8, device=dev)
    as32 = lambda t: t.to(device=dev, dtype=torch.int32).contiguous()  # noqa: E731
    kv_part_lib = lib.gather(-1, bm.partial_kv_indices.long())
    q_part_lib = lib.transpose(-2, -1).gather(-1, bm.partial_q_indices.long())
    kv = (bm.full_kv_num, bm.full_kv_indices, bm.partial_kv_num, bm.partial_kv_indices, kv_part_lib)
    q = (bm.full_q_num, bm.full_q_indices, bm.partial_q_num, bm.partial_q_indices, q_part_lib)
    return TritonPlan(bm.block_q, bm.block_k, tuple(map(as32, kv)), tuple(map(as32, q)), sub,
                      kinds.contiguous(), lib.contiguous())


def triton_plan(mask: Mask | None, lq: int, lk: int, block_q: int, block_k: int, device: torch.device) -> TritonPlan:
    """The plan of ``mask`` at these sizes on ``device``, derived once from the memoised
    :func:`~attnkit.masks.plan.tile_plan` and kept with it."""
    return tile_plan(mask, lq, lk, block_q, block_k, device=device).derive("triton", _from_blocks)


@functools.lru_cache(maxsize=32)
def _look_one_back(n_chunks: int, chunk: int, device: torch.device) -> TritonPlan:
    c = torch.arange(n_chunks, device=device)
    before = (c - 1) % n_chunks
    after = (c + 1) % n_chunks
    two = n_chunks > 1
    idx_kv = torch.stack([before, c], -1) if two else c.view(1, 1)  # (nC, 1 or 2) ascending not needed
    idx_q = torch.stack([c, after], -1) if two else c.view(1, 1)
    num = torch.full((1, 1, n_chunks), idx_kv.shape[-1], dtype=torch.int32, device=device)
    zero = torch.zeros(1, 1, n_chunks, dtype=torch.int32, device=device)
    as4 = lambda t: t.view(1, 1, n_chunks, -1).to(torch.int32).contiguous()  # noqa: E731
    lib = torch.zeros(1, 1, n_chunks, idx_kv.shape[-1], dtype=torch.int32, device=device)
    kv = (zero, as4(idx_kv), num, as4(idx_kv), lib)
    q = (zero, as4(idx_q), num, as4(idx_q), lib)
    sub = torch.zeros(1, chunk, chunk, dtype=torch.uint8, device=device)
    return TritonPlan(chunk, chunk, kv, q, sub)


def look_one_back_plan(n_chunks: int, chunk: int, device: torch.device) -> TritonPlan:
    """The tiles of an LSH round in sorted order: chunk ``c`` attends chunks ``c - 1``
    (cyclically) and ``c`` (one chunk: itself), all masked by the ``hashed`` rules."""
    return _look_one_back(n_chunks, chunk, torch.device(device))


class _PlanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, fwd_plan, bwd_plans, scale, hashed, launch):
        from . import triton_attention as ta

        out, lse = ta.fwd(q, k, v, fwd_plan, scale, hashed, launch)
        ctx.set_materialize_grads(False)  # an unused lse gets no gradient pass
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plans, ctx.scale, ctx.hashed, ctx.launch = bwd_plans, scale, hashed, launch
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        from .triton_backward import bwd

        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = bwd(q, k, v, out, lse, dout, dlse, ctx.plans, ctx.scale, ctx.hashed, ctx.launch)
        return dq, dk, dv, None, None, None, None, None


def plan_attention(q: Tensor, k: Tensor, v: Tensor, fwd_plan: TritonPlan,
                   bwd_plans: tuple[TritonPlan, TritonPlan] | None, scale: float, hashed: HashedIds | None = None,
                   launch: dict | None = None) -> tuple[Tensor, Tensor]:
    """Softmax attention of ``q (B, H, T, D)`` over ``k``, ``v (B, Hkv, S, D|Dv)`` on the kept
    tiles of the plans: ``fwd_plan`` forward; ``bwd_plans = (for dK / dV, for dQ)`` backward (the
    same mask at the tiles each kernel walks; needed only when an input requires grad).
    ``launch``: optional ``num_warps`` / ``num_stages`` / ``bwd_num_warps`` / ``bwd_num_stages``.
    Returns ``out (B, H, T, Dv)`` in q's dtype and ``lse (B, H, T)`` float32 (``-inf`` for a row
    with no key); both differentiable with respect to q, k and v."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        if bwd_plans is None:
            raise ValueError("bwd_plans are needed when an input requires grad")
        return _PlanAttention.apply(q, k, v, fwd_plan, bwd_plans, scale, hashed, launch)
    from . import triton_attention as ta

    return ta.fwd(q, k, v, fwd_plan, scale, hashed, launch)


def tile_weights(q: Tensor, k: Tensor, lse: Tensor, plan: TritonPlan, scale: float, dtype: torch.dtype) -> Tensor:
    """The weights ``(B, H, T, S)`` recomputed by the Triton weights kernel from ``lse``."""
    from .triton_weights import weights

    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    return weights(q, k, lse, plan, scale, dtype)
