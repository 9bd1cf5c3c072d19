"""``blockwise``: exact attention streamed over key blocks (FlashAttention-2 on CPU, in PyTorch).

The score matrix is never materialised. Queries are processed ``block_q`` rows at a time; for
each query block the keys are visited in chunks with a running row maximum ``m``, running sum
``l`` and output accumulator (the *online softmax*). Only the output and the per-row
log-sum-exp ``lse = m + log l`` are saved; the backward pass recomputes every score tile from
``q``, ``k`` and ``lse`` (FlashAttention-2: ``dV += P^T dO``, ``dS = P * (dO V^T - delta)`` with
``delta = rowsum(dO * O) - dlse``, ``dQ += dS K``, ``dK += dS^T Q``), so memory is
``O(B * H * ((T + S) * D + block_q * chunk_k))``.

Masks are honoured through the shared tile plan (:func:`attnkit.masks.plan.tile_plan`): empty
tiles are skipped, runs of full tiles are computed without a mask, partial tiles get the dense
sub-mask of just that tile range. Score modifiers are applied tile by tile with the tile's
indices; non-additive ones (soft-capping) are differentiated through with autograd on the tile.
Scores, sums and accumulators are float32 (float64 for float64 inputs), whatever the inputs;
bfloat16 inputs keep bfloat16 for the ``p @ v`` and gradient products (:func:`product_dtype`).

Weights: ``softmax`` (online) and ``sigmoid`` (elementwise, no running statistics).
Scores: ``scaled_dot``, ``dot`` and ``cosine`` (``q`` and ``k`` are normalised first).

Shape legend: B batch, H query heads, Hkv key/value heads, T queries, S keys, D head dim,
Dv value dim; ``bq`` rows of a query block, ``ck`` keys of a chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..call import AttentionCall
from ..kernels.tiles import kernel_form, kernel_usable
from ..masks import EMPTY, FULL, PARTIAL, Mask
from ..masks.base import DEFAULT_BLOCK
from ..masks.plan import BlockMask, tile_plan
from ..registry import AttnResult, ImplSpec, register_impl
from ..scores import ScoreMod, apply_mods
from ..shapes import repeat_kv
from ._common import (
    Option,
    compute_dtype,
    holds_grad_tensor,
    index_grid,
    on_kernel,
    prepared_qk,
    read_options,
    sdpa_can_run,
    sdpa_runs_fused,
)

__all__ = ["blockwise", "BlockPlan", "plan_blocks", "product_dtype", "cost_reasons", "COST", "OPTIONS", "DEFAULT_ROWS",
           "DEFAULT_CHUNK_K"]

DEFAULT_ROWS = 2 * DEFAULT_BLOCK  # query rows per step: two rows of tiles (fewer, larger matmuls measured
# faster than one row, while the key tile size matters little here; docs/blockwise.md)
DEFAULT_CHUNK_K = 1024  # keys one matmul covers at most (runs of tiles of one kind are merged up to it)

OPTIONS = {
    "block_q": Option(int, DEFAULT_ROWS, "query rows per step", minimum=1),
    "block_k": Option(int, DEFAULT_BLOCK, "keys per tile of the mask's tile plan", minimum=1),
    "chunk_k": Option(int, DEFAULT_CHUNK_K, "most keys one matmul covers", minimum=1),
    "kernel": Option(str, "auto", "who computes the tiles: 'auto' (the native C++ kernel where it is available, "
                     "for softmax calls without dropout or weights whose score modifiers are all built-in bias / "
                     "alibi / softcap, T x S >= 2**20), 'torch' (always PyTorch)", choices=("auto", "torch")),
}

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


# ----------------------------------------------------------------------------------------------
# the implementation behind attention()
# ----------------------------------------------------------------------------------------------


def _weights(call: AttentionCall, qs: Tensor, k: Tensor, lse: Tensor) -> Tensor:
    """The attention weights ``(B, H, T, S)`` recomputed from the scores and the saved lse
    (differentiable: the lse carries its own gradient back through the blockwise backward)."""
    s = torch.matmul(qs, k.transpose(-2, -1))  # (B, H, T, S) in the compute dtype
    if call.score_mods:
        s = apply_mods(s, call.score_mods, *call.index_grid(s.device), call.lq, call.lk)
    allowed = s != -math.inf
    if call.mask is not None:
        allowed = allowed & call.dense_mask(s.device)
    if call.weight.kind == "sigmoid":
        w = _sigmoid_weights(s, call.lk)
    else:
        w = torch.exp(s - lse.masked_fill(lse == -math.inf, math.inf))
    return torch.where(allowed, w, 0.0).to(call.q.dtype)


def blockwise(call: AttentionCall) -> AttnResult:
    """Blockwise exact attention (see the module docstring). Options: ``block_q`` (query rows per
    step; a multiple of the tile size steps over several rows of the shared tile plan), ``block_k``
    (key tile size of the tile plan), ``chunk_k`` (most keys one matmul covers: consecutive tiles
    of one kind are merged up to this).

    Equivalent PyTorch code::

        out = reference(call)  # same result, without the (B, H, T, S) score matrix
    """
    opts = read_options(call, "blockwise", OPTIONS)
    dtype = compute_dtype(call.q.dtype)
    q, k, scale = prepared_qk(call, dtype)
    mods = kernel_form(call.score_mods)
    if (opts["kernel"] == "auto" and mods is not None and call.weight.is_builtin("softmax") and not call.dropout_p
            and not call.return_weights
            and kernel_usable(device=call.q.device, head_dim=max(call.head_dim, call.v_dim), block_q=DEFAULT_BLOCK,
                              block_k=opts["block_k"], work=call.lq * call.lk)):
        return on_kernel(call, DEFAULT_BLOCK, opts["block_k"], mods)
    qs = q if scale == 1.0 else q * scale
    n_rep = call.heads // call.kv_heads
    k_rep, v_rep = repeat_kv(k, n_rep), repeat_kv(call.v.to(product_dtype(call.q.dtype)), n_rep)
    plan = plan_blocks(call.lq, call.lk, call.mask, block_q=opts["block_q"], block_k=opts["block_k"],
                       chunk_k=opts["chunk_k"], mods=call.score_mods, weight=call.weight.kind)
    out, lse = _BlockwiseAttention.apply(qs, k_rep, v_rep, plan)  # (B, H, T, Dv), (B, H, T, 1)
    return AttnResult(out.to(call.q.dtype),
                      _weights(call, qs, k_rep, lse) if call.return_weights else None,
                      lse.squeeze(-1) if call.return_lse else None)


# ----------------------------------------------------------------------------------------------
# cost model and registration
# ----------------------------------------------------------------------------------------------

# The cost model behind impl="auto", per input dtype (thresholds measured against impl="sdpa" on
# window and padding masks, T = 128..2048, forward and forward + backward; the numbers are in
# docs/blockwise.md): ``small`` - below this many (query, key) pairs the per-tile overhead loses to
# one dense product; ``dense`` - above this fraction of tiles computed, sdpa with a dense mask is
# faster (None: never; float16 matmuls are slow on CPUs, where blockwise computes in float32).
COST = {
    torch.float64: (512 * 512, 0.75),
    torch.float32: (512 * 512, 0.75),
    torch.bfloat16: (512 * 512, 0.75),
    torch.float16: (128 * 128, None),
}
DENSE_MASK_OK = 8192 * 8192  # up to here a dense bool mask for sdpa is affordable (64 MiB)


def _computed_fraction(call: AttentionCall) -> float:
    """Fraction of the ``(block_q, block_k)`` tiles the blockwise loop computes for ``call``."""
    opts = read_options(call, "blockwise", OPTIONS)
    plan = plan_blocks(call.lq, call.lk, call.mask, block_q=opts["block_q"], block_k=opts["block_k"],
                       chunk_k=opts["chunk_k"])
    total = math.ceil(call.lq / plan.block_q) * math.ceil(call.lk / plan.block_k)
    return plan.tiles_visited() / max(1, total)


def cost_reasons(call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` should prefer another implementation (rules from measured thresholds)."""
    if sdpa_runs_fused(call):
        return ["sdpa runs this call fused without a dense mask or bias buffer, and is faster"]
    if call.return_weights:
        return ["return_weights=True materialises the T x S weights anyway: the reference computes them "
                "in one pass, faster"]
    small, dense = COST[call.q.dtype]
    if call.lq * call.lk < small:
        return [f"small problem for {call.q.dtype} (T*S = {call.lq * call.lk} < {small}): per-tile overhead "
                "outweighs one dense score matrix"]
    if dense is not None and call.lq * call.lk <= DENSE_MASK_OK and sdpa_can_run(call):
        frac = _computed_fraction(call)
        if frac > dense:
            return [f"few tiles to skip ({frac:.0%} of the tiles computed > {dense:.0%}) and T*S <= "
                    f"{DENSE_MASK_OK}: sdpa with a dense mask is faster"]
    return []


def _check(call: AttentionCall) -> list[str]:
    if call.score_mods and torch.is_grad_enabled() and holds_grad_tensor(call.score_mods):
        return ["a score modifier holds a tensor that requires grad (no gradient for it here)"]
    return []


register_impl(ImplSpec(
    name="blockwise",
    fn=blockwise,
    description="FlashAttention-2 style tiles with online softmax; O(T) memory, recomputing backward",
    scores=frozenset({"scaled_dot", "dot", "cosine"}),
    weights=frozenset({"softmax", "sigmoid"}),
    score_mods="any",
    dropout=False,
    devices=frozenset({"cpu"}),
    returns_lse=True,
    options=frozenset(OPTIONS),
    priority=6,
    check=_check,
    auto_check=cost_reasons,
))
