"""The tile plan in the native kernel's form, and the differentiable call of the kernel.

Shared by every implementation that runs the kernel (``impl="native"``, and ``block_sparse`` /
``blockwise`` for large problems): :func:`tile_attention` takes prepared ``q``, ``k``, ``v`` and a
mask and returns ``(out, lse)``.

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim, Dv value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..masks import EMPTY, PARTIAL, Mask
from ..masks.base import BlockMask, tile_plan
from . import native_module, unavailable_reason

__all__ = ["NativePlan", "native_plan", "tile_attention", "kernel_usable", "KERNEL_MIN_WORK", "MAX_BLOCK",
           "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
MAX_BLOCK = 512  # the kernel batches at most this many keys (query rows) into one product


class NativePlan:
    """The tile plan in the kernel's form.

    Forward: the query blocks of each mask slice are grouped (consecutive blocks, at most ``G``,
    while the union of their key blocks wastes at most :data:`GROUP_WASTE` of the work), and each
    group lists that union: ``slice_ptr (Bm*Hm + 1)`` groups per slice, ``grp_q0 (nG,)`` /
    ``grp_nq (nG,)`` first query block and count, ``grp_ptr (nG + 1,)`` into ``grp_col (nU,)`` key
    blocks and ``grp_lib (nU, G)`` per query block -1 (full), -2 (empty) or a sub-mask index.
    Backward: ``col_ptr (Bm*Hm*nK + 1)``, ``col_row (n,)`` query block and ``col_lib (n,)`` of each
    kept tile by (slice, key block). ``masks (L, bq, bk)`` uint8 sub-masks of the partial tiles
    (1 = attend); partial tiles that allow nothing are dropped.
    """

    def __init__(self, bm: BlockMask):
        kinds = bm.kinds.cpu()
        n_bm, n_hm, n_q, n_k = kinds.shape
        idx = (kinds != EMPTY).nonzero()  # (n, 4) sorted by slice, query block, key block
        kind = kinds[tuple(idx.unbind(1))]
        lib = torch.full((len(idx),), -1, dtype=torch.int64)
        part = (kind == PARTIAL).nonzero().flatten()
        masks = torch.zeros(1, bm.block_q, bm.block_k, dtype=torch.uint8)
        if len(part):
            sub = bm.tile_mask(idx[part]).cpu()  # (nP, bq, bk) True = attend
            alive = sub.flatten(1).any(-1)
            keep = torch.ones(len(idx), dtype=torch.bool)
            keep[part[~alive]] = False
            sub = sub[alive]
            lib[part[alive]] = torch.arange(len(sub))
            idx, lib = idx[keep], lib[keep]
            if len(sub):
                masks = sub.to(torch.uint8).contiguous()
        b, h, qi, ki = idx.unbind(1)
        head = b * n_hm + h
        self.group = max(1, min(MAX_GROUP_ROWS // bm.block_q, 8))
        forward = _groups(_ptr(head * n_q + qi, n_bm * n_hm * n_q), ki, lib, n_bm * n_hm, n_q, self.group)
        order = torch.argsort((head * n_k + ki) * n_q + qi, stable=True)
        backward = (_ptr(head[order] * n_k + ki[order], n_bm * n_hm * n_k), qi[order].contiguous(),
                    lib[order].contiguous())
        self.tensors = [*forward, *backward, masks]
        self.dims = (n_bm, n_hm, n_q, n_k, bm.block_q, bm.block_k, self.group)
        self.tiles = len(idx)

    def args(self) -> tuple:
        """The plan arguments of the kernel's ``forward`` / ``backward``."""
        return (self.tensors, *self.dims)


MAX_GROUP_ROWS = 256  # query rows the forward pass handles together (shares each key/value read)
GROUP_WASTE = 0.15  # a query block joins a group if the group then computes at most this much extra


def _groups(row_ptr: Tensor, cols: Tensor, libs: Tensor, n_slices: int, n_q: int, cap: int) -> list[Tensor]:
    """Forward groups of consecutive query blocks (see :class:`NativePlan`)."""
    ptr, col, lib = row_ptr.tolist(), cols.tolist(), libs.tolist()
    slice_ptr, q0, nq, g_ptr, g_col, g_lib = [0], [], [], [0], [], []

    def close(start: int, rows: list[dict[int, int]]) -> None:
        union = sorted(set().union(*rows))
        q0.append(start)
        nq.append(len(rows))
        g_col.extend(union)
        for c in union:
            g_lib.extend([row.get(c, -2) for row in rows] + [-2] * (cap - len(rows)))
        g_ptr.append(len(g_col))

    for sl in range(n_slices):
        rows: list[dict[int, int]] = []
        start, union, kept = 0, set(), 0
        for qi in range(n_q):
            r = sl * n_q + qi
            row = dict(zip(col[ptr[r]:ptr[r + 1]], lib[ptr[r]:ptr[r + 1]]))
            if rows:
                new_union = union | row.keys()
                if len(rows) < cap and len(new_union) * (len(rows) + 1) <= (1 + GROUP_WASTE) * (kept + len(row)):
                    rows.append(row)
                    union, kept = new_union, kept + len(row)
                    continue
                close(start, rows)
            rows, start, union, kept = [row], qi, set(row), len(row)
        if rows:
            close(start, rows)
        slice_ptr.append(len(q0))
    as_t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return [as_t(slice_ptr), as_t(q0), as_t(nq), as_t(g_ptr), as_t(g_col), as_t(g_lib)]


def _ptr(ids: Tensor, n: int) -> Tensor:
    """CSR offsets ``(n + 1,)`` of sorted group ids."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(ids, minlength=n).cumsum(0)])


def native_plan(bm: BlockMask) -> NativePlan:
    """The kernel's view of the tile plan ``bm``, derived once and kept with it."""
    return bm.derive(("native",), NativePlan)


class _TileAttention(torch.autograd.Function):
    """``(q, k, v) -> (out, lse)`` with the kernel; ``lse`` is -inf on rows with no allowed key."""

    @staticmethod
    def forward(ctx, q, k, v, plan, scale):
        out, lse = native_module().forward(q, k, v, *plan.args(), scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        d_out = torch.zeros_like(out) if d_out is None else d_out.contiguous()
        delta = (d_out * out).sum(-1)  # (B, H, T)
        if d_lse is not None:
            delta = delta - d_lse
        dq, dk, dv = native_module().backward(q, k, v, d_out, lse.contiguous(), delta.contiguous(),
                                                      *ctx.plan.args(), ctx.scale)
        return dq, dk, dv, None, None


def tile_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, block_q: int,
                   block_k: int) -> tuple[Tensor, Tensor]:
    """``(out (B, H, T, Dv), lse (B, H, T))`` of softmax attention of ``q (B, H, T, D)`` over
    ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)`` (float32 or float64, same dtype) where ``mask``
    allows, with the compiled kernel; differentiable in ``q``, ``k``, ``v`` and through ``lse``.
    ``lse`` is -inf (and the output zero) on rows with no allowed key. Builds the extension on
    first use (raises RuntimeError when it cannot)."""
    native_module()
    plan = native_plan(tile_plan(mask, q.shape[2], k.shape[2], block_q, block_k))
    return _TileAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), plan, float(scale))


KERNEL_MIN_WORK = 1 << 20
"""Score elements (``T x S``) from which ``block_sparse`` and ``blockwise`` hand their tiles to the
native kernel (option ``kernel="auto"``); smaller calls keep their pure-PyTorch path."""


def kernel_usable(*, device: torch.device, head_dim: int, block_q: int, block_k: int, work: int) -> bool:
    """Whether a tile implementation should run a softmax call with no score modifiers on the
    native kernel: a CPU tensor, head dims and blocks the kernel takes, at least
    :data:`KERNEL_MIN_WORK` score elements, and the extension available (built on first use)."""
    if device.type != "cpu" or head_dim > MAX_HEAD_DIM or max(block_q, block_k) > MAX_BLOCK:
        return False
    if work < KERNEL_MIN_WORK or unavailable_reason() is not None:
        return False
    try:
        native_module()
    except RuntimeError:  # the build failed: remembered, reported by unavailable_reason
        return False
    return True
