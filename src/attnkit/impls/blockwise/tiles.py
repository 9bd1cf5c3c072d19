"""The PyTorch computation of ``blockwise``: one score tile (modifiers, mask, the exp floor), the
forward pass with the online softmax and the backward pass by recomputation, over the schedule of
:mod:`.plan`, as one autograd function (3-D tensors: batch and heads flattened to BH)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...scores import apply_mods
from .._common import (
    compute_dtype,
    index_grid,
)
from .plan import BlockPlan, Chunk

# ----------------------------------------------------------------------------------------------
# one score tile
# ----------------------------------------------------------------------------------------------


class _TileBuffer:
    """One reusable ``(BH, bq, ck)`` buffer (flat storage viewed at each tile's size), so the
    loops do not allocate, and fault in, a fresh tile of memory per step."""

    def __init__(self, bh: int, bq: int, ck: int, dtype: torch.dtype, device) -> None:
        self.flat = torch.empty(bh * bq * ck, dtype=dtype, device=device)

    def view(self, *shape: int) -> Tensor:
        return self.flat[: math.prod(shape)].view(shape)


def _raw_scores(qb: Tensor, kc: Tensor, buf: _TileBuffer) -> Tensor:
    """``qb kc^T`` in the buffer's dtype: (BH, bq, D) x (BH, ck, D) -> (BH, bq, ck)."""
    out = buf.view(qb.shape[0], qb.shape[1], kc.shape[1])  # (BH, bq, ck)
    if qb.dtype == out.dtype:
        return torch.matmul(qb, kc.transpose(-2, -1), out=out)
    return out.copy_(torch.matmul(qb, kc.transpose(-2, -1)))  # bfloat16 products, float32 tile


def _low(x: Tensor, dtype: torch.dtype, buf: _TileBuffer | None) -> Tensor:
    """``x`` in the products' dtype, written into a reused buffer when it differs."""
    return x if x.dtype == dtype else buf.view(*x.shape).copy_(x)


def _add_matmul(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` in place (``acc`` float32 or float64; ``a``, ``b`` may be bfloat16, whose
    matmul accumulates in float32 inside)."""
    if acc.dtype == a.dtype:
        acc.baddbmm_(a, b)
    else:
        acc += torch.bmm(a, b)


def product_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the ``p @ v`` and gradient products for inputs of ``dtype``: bfloat16 stays
    bfloat16 (CPU bfloat16 matmuls are fast and accumulate in float32 inside), everything else is
    computed in :func:`~attnkit.impls._common.compute_dtype`. Scores are always float32 or wider:
    a low-precision ``q k^T`` loses the softmax (and overflows in float16)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else compute_dtype(dtype)


def _modify_and_mask(s: Tensor, plan: BlockPlan, heads: int, i0: int, i1: int, chunk: Chunk) -> Tensor:
    """Apply the score modifiers and the mask (``-inf``, whatever the score was, NaN included) to
    a raw tile ``s`` (BH, bq, ck)."""
    j0, j1, masked = chunk
    s4 = s.view(-1, heads, i1 - i0, j1 - j0)  # (B, H, bq, ck)
    if plan.mods:
        b, h, i, j = index_grid(s4.shape[0], heads, i0, i1, j0, j1, s.device)
        s4 = apply_mods(s4, plan.mods, b, h, i, j, plan.lq, plan.lk)
    if masked:
        allowed = plan.blocks.region(i0, i1, j0, j1, s.device)  # (Bm, Hm, bq, ck)
        neg_inf = torch.full((), -math.inf, dtype=s.dtype)
        # torch.where, not a -inf bias (NaN + -inf is NaN) nor a broadcast masked_fill_ (slower)
        s4 = torch.where(allowed, s4, neg_inf) if s4.requires_grad else torch.where(allowed, s4, neg_inf, out=s4)
    return s4.reshape(s.shape)


# exp() of very negative or -inf arguments takes a slow path in the vectorised CPU kernel
# (about 4x slower than finite arguments), and masked scores are -inf. So exponents are clamped
# at EXP_FLOOR and results at or below EXP_ZERO are set to exactly 0: masked keys still get weight
# 0, and an allowed weight below 3e-35 (relative to the row's largest) is dropped, which is
# below the resolution of float32 and of float64 sums of weights near 1. NaN passes through
# both steps unchanged (clamp and threshold keep it).
EXP_FLOOR = -80.0
EXP_ZERO = 2.0 * math.exp(EXP_FLOOR)


def _exp_(x: Tensor, masked: bool) -> Tensor:
    """``exp(x)`` in place; for tiles that may hold -inf (``masked``) clamped so that it stays on
    the fast path, and masked entries come out as exactly 0."""
    if not masked:
        return x.exp_()
    return torch.nn.functional.threshold_(x.clamp_(min=EXP_FLOOR).exp_(), EXP_ZERO, 0.0)


def _sigmoid_weights(s: Tensor, lk: int) -> Tensor:
    """Elementwise sigmoid attention weights of a tile (``-inf`` scores give exactly 0)."""
    return torch.sigmoid(s - math.log(lk))


# ----------------------------------------------------------------------------------------------
# forward and backward over the plan (3-D tensors: batch and heads flattened to BH)
# ----------------------------------------------------------------------------------------------


def _finish_rows(acc: Tensor, m: Tensor, l: Tensor) -> tuple[Tensor, Tensor]:  # noqa: E741
    """Output ``acc / l`` and ``lse = m + log l`` of a block's rows; a row with no allowed key
    (``l == 0``) gives zeros and ``-inf``. A row that met a NaN or +inf score has ``l = NaN``
    (``inf - inf``, as in torch.softmax) and gives NaN."""
    dead = l == 0  # NaN sums are not dead: they propagate
    out = torch.where(dead, 0.0, acc / torch.where(dead, 1.0, l))  # (BH, bq, Dv)
    lse = torch.where(dead, -math.inf, m + torch.log(torch.where(dead, 1.0, l)))  # (BH, bq, 1)
    return out, lse


def _forward_block(qb: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, heads: int, i0: int, i1: int,
                   bufs: tuple[_TileBuffer, _TileBuffer | None]) -> tuple[Tensor, Tensor]:
    """Online softmax of one query block: output (BH, bq, Dv) and lse (BH, bq, 1)."""
    bh, bq, _ = qb.shape
    acc = qb.new_zeros(bh, bq, v.shape[-1])  # (BH, bq, Dv)
    m = qb.new_full((bh, bq, 1), -math.inf)  # (BH, bq, 1) running max
    l = qb.new_zeros(bh, bq, 1)  # noqa: E741  (BH, bq, 1) running sum
    for chunk in plan.rows[i0 // plan.block_q]:
        j0, j1, _ = chunk
        s = _modify_and_mask(_raw_scores(qb, k[:, j0:j1], bufs[0]), plan, heads, i0, i1, chunk)  # (BH, bq, ck)
        if plan.weight == "sigmoid":
            _add_matmul(acc, _low(_sigmoid_weights(s, plan.lk), v.dtype, bufs[1]), v[:, j0:j1])
            continue
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (BH, bq, 1); NaN propagates
        m_use = m_new.masked_fill(m_new == -math.inf, 0.0)  # rows with nothing allowed yet
        p = _exp_(s.sub_(m_use), chunk[2] or bool(plan.mods))  # (BH, bq, ck); in place (no graph here)
        alpha = torch.exp(m - m_use)  # (BH, bq, 1) rescales what was accumulated so far
        l = torch.addcmul(p.sum(-1, keepdim=True), l, alpha)  # noqa: E741
        acc.mul_(alpha)
        _add_matmul(acc, _low(p, v.dtype, bufs[1]), v[:, j0:j1])
        m = m_new
    if plan.weight == "sigmoid":
        return acc, acc.new_zeros(bh, bq, 1)
    return _finish_rows(acc, m, l)


def _backward_block(qb: Tensor, k: Tensor, v: Tensor, dob: Tensor, lse_b: Tensor, delta_b: Tensor,
                    dk: Tensor, dv: Tensor, plan: BlockPlan, heads: int, i0: int, i1: int,
                    bufs: tuple[_TileBuffer, _TileBuffer, _TileBuffer | None],
                    low: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Gradients of one query block: returns dq (BH, bq, D); adds into dk, dv (BH, S, D|Dv).
    ``low`` holds this block's queries, the keys and the block's output gradient in the products'
    dtype (the same tensors as ``qb``, ``k``, ``dob`` unless the inputs are bfloat16)."""
    qb_l, k_l, dob_l = low
    dqb = torch.zeros_like(qb)  # (BH, bq, D)
    for chunk in plan.rows[i0 // plan.block_q]:
        j0, j1, _ = chunk
        raw = _raw_scores(qb, k[:, j0:j1], bufs[0])  # (BH, bq, ck)
        if plan.grad_mods:  # differentiate through the modifiers on this tile
            raw = raw.clone().requires_grad_()
            with torch.enable_grad():
                s = _modify_and_mask(raw, plan, heads, i0, i1, chunk)
            p = _tile_probs(s.detach().clone(), lse_b, plan, chunk[2])
        else:
            s = _modify_and_mask(raw, plan, heads, i0, i1, chunk)
            p = _tile_probs(s, lse_b, plan, chunk[2])  # (BH, bq, ck), computed in place over s
        _add_matmul(dv[:, j0:j1], _low(p, v.dtype, bufs[2]).transpose(-2, -1), dob_l)
        dp = _raw_scores(dob_l, v[:, j0:j1], bufs[1])  # (BH, bq, ck) = dO V^T
        if plan.weight == "sigmoid":
            ds = dp.mul_(p).mul_(1 - p)
        else:
            ds = dp.sub_(delta_b).mul_(p)  # (BH, bq, ck) = P * (dP - delta)
        if plan.grad_mods:
            (ds,) = torch.autograd.grad(s, raw, ds)
        ds = _low(ds, v.dtype, bufs[2])
        _add_matmul(dqb, ds, k_l[:, j0:j1])
        _add_matmul(dk[:, j0:j1], ds.transpose(-2, -1), qb_l)
    return dqb


def _tile_probs(s: Tensor, lse_b: Tensor, plan: BlockPlan, masked: bool) -> Tensor:
    """Recomputed weights of a tile from its scores (and the saved lse for softmax), in place."""
    if plan.weight == "sigmoid":
        return s.sub_(math.log(plan.lk)).sigmoid_()
    return _exp_(s.sub_(lse_b), masked or bool(plan.mods))  # (BH, bq, ck); dead rows: lse = +inf -> 0


class _BlockwiseAttention(torch.autograd.Function):
    """``(q, k, v) -> (out, lse)`` with ``q`` already scaled. ``q``, ``k`` in the compute dtype
    (float32 or float64: the scores), ``v`` in the products' dtype (:func:`product_dtype`); k, v
    have as many heads as q. ``out`` and ``lse`` come in the compute dtype. Tensors are
    (B, H, L, D) outside and flattened to (BH, L, D) inside."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan) -> tuple[Tensor, Tensor]:
        bsz, heads = q.shape[:2]
        q3, k3, v3 = (x.reshape(bsz * heads, x.shape[2], x.shape[3]) for x in (q, k, v))  # (BH, L, D)
        bh, ck = bsz * heads, plan.widest_chunk
        bufs = (_TileBuffer(bh, plan.block_q, ck, q.dtype, q.device),
                _TileBuffer(bh, plan.block_q, ck, v.dtype, q.device) if v.dtype != q.dtype else None)
        out = q.new_empty(bh, plan.lq, v.shape[-1])  # (BH, T, Dv)
        lse = q.new_empty(bh, plan.lq, 1)  # (BH, T, 1)
        for i0 in range(0, plan.lq, plan.block_q):
            i1 = min(plan.lq, i0 + plan.block_q)
            out[:, i0:i1], lse[:, i0:i1] = _forward_block(q3[:, i0:i1], k3, v3, plan, heads, i0, i1, bufs)
        ctx.save_for_backward(q3, k3, v3, out, lse)
        ctx.plan, ctx.shape = plan, (bsz, heads)
        ctx.set_materialize_grads(False)
        return out.view(bsz, heads, plan.lq, v.shape[-1]), lse.view(bsz, heads, plan.lq, 1)

    @staticmethod
    def backward(ctx, dout: Tensor | None, dlse: Tensor | None):
        q, k, v, out, lse = ctx.saved_tensors  # (BH, T|S, D|Dv), lse (BH, T, 1)
        plan: BlockPlan = ctx.plan
        bsz, heads = ctx.shape
        dout = torch.zeros_like(out) if dout is None else dout.reshape(out.shape)  # (BH, T, Dv)
        dk = torch.zeros_like(k)  # (BH, S, D)
        dv = torch.zeros(v.shape, dtype=q.dtype, device=v.device)  # (BH, S, Dv), accumulated in float32+
        dq = torch.empty_like(q)  # (BH, T, D)
        lse_safe = lse.masked_fill(lse == -math.inf, math.inf)  # dead rows: every weight 0
        delta = (dout * out).sum(-1, keepdim=True)  # (BH, T, 1)
        if dlse is not None:  # d lse / d s = p: the lse gradient joins delta
            delta -= dlse.reshape(delta.shape)
        q_l, k_l, dout_l = (x.to(v.dtype) for x in (q, k, dout))  # products' dtype (copies for bfloat16 only)
        bh, ck = bsz * heads, plan.widest_chunk
        bufs = (_TileBuffer(bh, plan.block_q, ck, q.dtype, q.device),
                _TileBuffer(bh, plan.block_q, ck, q.dtype, q.device),
                _TileBuffer(bh, plan.block_q, ck, v.dtype, q.device) if v.dtype != q.dtype else None)
        for i0 in range(0, plan.lq, plan.block_q):
            i1 = min(plan.lq, i0 + plan.block_q)
            rows = slice(i0, i1)
            dq[:, rows] = _backward_block(q[:, rows], k, v, dout[:, rows], lse_safe[:, rows], delta[:, rows], dk, dv,
                                          plan, heads, i0, i1, bufs, (q_l[:, rows], k_l, dout_l[:, rows]))
        shape = lambda x: x.view(bsz, heads, *x.shape[1:])  # noqa: E731
        return shape(dq), shape(dk), shape(dv.to(v.dtype)), None
