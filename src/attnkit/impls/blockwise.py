"""``blockwise``: exact attention streamed over key blocks (FlashAttention-2 on CPU, in PyTorch).

The score matrix is never materialised. Queries are processed ``block_q`` rows at a time; for
each query block the keys are visited in chunks with a running row maximum ``m``, running sum
``l`` and output accumulator (the *online softmax*). Only the output and the per-row
log-sum-exp ``lse = m + log l`` are saved; the backward pass recomputes every score tile from
``q``, ``k`` and ``lse`` (FlashAttention-2: ``dV += P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))``,
``dQ += dS K``, ``dK += dS^T Q``), so memory is ``O(B * H * ((T + S) * D + block_q * chunk_k))``.

Masks are honoured through their tile classification (``mask.blocks``): empty tiles are
skipped, runs of full tiles are computed without a mask, partial tiles get the dense sub-mask
of just that tile range. Score modifiers are applied tile by tile with the tile's indices;
non-additive ones (soft-capping) are differentiated through with autograd on the tile.

Weights: ``softmax`` (online) and ``sigmoid`` (elementwise, no running statistics).
Scores: ``scaled_dot``, ``dot`` and ``cosine`` (``q`` and ``k`` are normalised first).

Shape legend: B batch, H query heads, Hkv key/value heads, T queries, S keys, D head dim,
Dv value dim; ``bq`` rows of a query block, ``ck`` keys of a chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from ..errors import AttnKitError
from ..masks import EMPTY, FULL, PARTIAL, And, Causal, DenseMask, FromMod, Mask, Not, Or, Random
from ..registry import AttnResult, ImplSpec, register_impl
from ..scores import ScoreMod, apply_mods
from ..shapes import repeat_kv

__all__ = ["blockwise", "BlockPlan", "plan_blocks", "default_blocks", "DEFAULT_BLOCKS"]

# (block_q, block_k, chunk_k) by input dtype, chosen by measurement (docs/blockwise.md):
# float32 / float64 prefer 128-row blocks that stay in cache; half inputs prefer larger tiles.
DEFAULT_BLOCKS = {"float": (128, 128, 1024), "half": (256, 256, 1024)}
DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K, DEFAULT_CHUNK_K = DEFAULT_BLOCKS["float"]

Chunk = tuple[int, int, bool]  # key range [j0, j1) and whether it needs the mask


# ----------------------------------------------------------------------------------------------
# the plan: which key chunks every query block visits
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """The work of one call: block sizes and, per query block, its key chunks.

    ``rows[qi]`` lists ``(j0, j1, masked)`` chunks of query block ``qi`` (rows
    ``qi * block_q`` to ``(qi + 1) * block_q``); empty tiles appear in no chunk.
    """

    lq: int
    lk: int
    block_q: int
    block_k: int
    chunk_k: int
    rows: tuple[tuple[Chunk, ...], ...]
    mask: Mask | None
    mods: tuple[ScoreMod, ...]
    weight: str  # "softmax" | "sigmoid"

    @property
    def grad_mods(self) -> bool:
        """Whether a modifier is not a pure bias (its derivative is needed in the backward)."""
        return any(not m.additive for m in self.mods)

    @property
    def widest_chunk(self) -> int:
        """The most keys any chunk covers (the size of the tile buffers)."""
        return max((j1 - j0 for row in self.rows for j0, j1, _ in row), default=1)

    def tiles_visited(self) -> int:
        """Number of ``(block_q, block_k)`` tiles computed (empty tiles are not)."""
        return sum((j1 - j0 + self.block_k - 1) // self.block_k for row in self.rows for j0, j1, _ in row)


def _needs_refine(mask: Mask) -> bool:
    """Exact refinement of partial tiles pays off for combinations of cheap structured masks."""
    if not isinstance(mask, (And, Or, Not)):
        return False
    return not any(isinstance(leaf, (Random, DenseMask, FromMod)) for leaf in mask.leaves())


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


def plan_blocks(lq: int, lk: int, mask: Mask | None, *, block_q: int = DEFAULT_BLOCK_Q,
                block_k: int = DEFAULT_BLOCK_K, chunk_k: int = DEFAULT_CHUNK_K,
                mods: tuple[ScoreMod, ...] = (), weight: str = "softmax") -> BlockPlan:
    """Classify ``(block_q, block_k)`` tiles of ``mask`` and group each query block's tiles into
    chunks. A tile counts as empty only if it is empty for every batch element and head, as full
    only if full for all of them."""
    nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
    if mask is None:
        kinds = torch.full((nq, nk), FULL, dtype=torch.int8)
    else:
        k4 = mask.blocks(lq, lk, block_q, block_k, refine=_needs_refine(mask)).kinds  # (Bm, Hm, nQ, nK)
        any_kind = (k4 != EMPTY).flatten(0, 1).any(0)  # (nQ, nK)
        all_full = (k4 == FULL).flatten(0, 1).all(0)  # (nQ, nK)
        kinds = torch.where(all_full, FULL, torch.where(any_kind, PARTIAL, EMPTY))
    rows = tuple(_row_chunks(r, lk, block_k, chunk_k) for r in kinds.tolist())
    return BlockPlan(lq, lk, block_q, block_k, chunk_k, rows, mask, mods, weight)


# ----------------------------------------------------------------------------------------------
# one score tile
# ----------------------------------------------------------------------------------------------


def _chunk_mask(mask: Mask, i0: int, i1: int, j0: int, j1: int, lq: int, lk: int, device) -> Tensor:
    """Dense sub-mask ``(Bm, Hm, bq, ck)`` of rows ``[i0, i1)`` and keys ``[j0, j1)``."""
    if isinstance(mask, DenseMask):  # slice the stored tensor instead of gathering it
        t = mask.tensor
        return t[..., i0:i1 if t.shape[2] > 1 else None, j0:j1 if t.shape[3] > 1 else None].to(device)
    return mask.mod(*_tile_indices(mask.num_batch, mask.num_heads, i0, i1, j0, j1, device), lq, lk)


def _tile_indices(nb: int, nh: int, i0: int, i1: int, j0: int, j1: int, device) -> tuple[Tensor, ...]:
    """Broadcast index tensors ``b (nb,1,1,1)``, ``h (1,nh,1,1)``, ``i (1,1,bq,1)``, ``j (1,1,1,ck)``."""
    b = torch.arange(nb, device=device).view(-1, 1, 1, 1)
    h = torch.arange(nh, device=device).view(1, -1, 1, 1)
    i = torch.arange(i0, i1, device=device).view(1, 1, -1, 1)
    j = torch.arange(j0, j1, device=device).view(1, 1, 1, -1)
    return b, h, i, j


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
    return out.copy_(torch.matmul(qb, kc.transpose(-2, -1)))  # half inputs: scores kept in float32


def _modify_and_mask(s: Tensor, plan: BlockPlan, heads: int, i0: int, i1: int, chunk: Chunk) -> Tensor:
    """Apply the score modifiers and the mask (``-inf``) to a raw tile ``s`` (BH, bq, ck)."""
    j0, j1, masked = chunk
    s4 = s.view(-1, heads, i1 - i0, j1 - j0)  # (B, H, bq, ck)
    if plan.mods:
        b, h, i, j = _tile_indices(s4.shape[0], heads, i0, i1, j0, j1, s.device)
        s4 = apply_mods(s4, plan.mods, b, h, i, j, plan.lq, plan.lk)
    if masked and plan.mask is not None:
        allowed = _chunk_mask(plan.mask, i0, i1, j0, j1, plan.lq, plan.lk, s.device)  # (Bm, Hm, bq, ck)
        if s4.requires_grad:
            s4 = s4.masked_fill(~allowed, -math.inf)
        else:  # a (Bm, Hm, bq, ck) bias of 0 / -inf: a broadcast add is far cheaper than masked_fill_
            s4 = s4.add_(torch.zeros((), dtype=s.dtype).masked_fill(~allowed, -math.inf))
    return s4.reshape(s.shape)


# exp() of very negative or -inf arguments takes a slow path in the vectorised CPU kernel
# (about 4x slower than finite arguments), and masked scores are -inf. So exponents are clamped
# at EXP_FLOOR and results at or below EXP_ZERO are set to exactly 0: masked keys still get weight
# 0, and an allowed weight below 3e-35 (relative to the row's largest) is dropped, which is
# below the resolution of float32 and of float64 sums of weights near 1.
EXP_FLOOR = -80.0
EXP_ZERO = 2.0 * math.exp(EXP_FLOOR)


def _exp_(x: Tensor, masked: bool) -> Tensor:
    """``exp(x)`` in place; for tiles that may hold -inf (``masked``) clamped so that it stays on
    the fast path, and masked entries come out as exactly 0."""
    if not masked:
        return x.exp_()
    return F.threshold_(x.clamp_(min=EXP_FLOOR).exp_(), EXP_ZERO, 0.0)


def _sigmoid_weights(s: Tensor, lk: int) -> Tensor:
    """Elementwise sigmoid attention weights of a tile (``-inf`` scores give exactly 0)."""
    return torch.sigmoid(s - math.log(lk))


def _low(x: Tensor, dtype: torch.dtype, buf: _TileBuffer | None) -> Tensor:
    """``x`` in the inputs' (half) dtype, written into a reused buffer when one is given."""
    if x.dtype == dtype:
        return x
    if buf is None:
        return x.to(dtype)
    return buf.view(*x.shape).copy_(x)


def _add_matmul(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` in place; ``a`` is cast to ``b``'s dtype (half inputs: half products)."""
    a = a.to(b.dtype)
    if acc.dtype == b.dtype:
        acc.baddbmm_(a, b)
    else:
        acc += torch.bmm(a, b)


# ----------------------------------------------------------------------------------------------
# forward and backward over the plan (3-D tensors: batch and heads flattened to BH)
# ----------------------------------------------------------------------------------------------


def _forward_block(qb: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, heads: int, i0: int, i1: int,
                   buf: _TileBuffer, low: _TileBuffer | None = None) -> tuple[Tensor, Tensor]:
    """Online softmax of one query block: output (BH, bq, Dv) and lse (BH, bq, 1)."""
    bh, bq, _ = qb.shape
    acc_dtype = buf.flat.dtype
    acc = qb.new_zeros(bh, bq, v.shape[-1], dtype=acc_dtype)  # (BH, bq, Dv)
    m = qb.new_full((bh, bq, 1), -math.inf, dtype=acc_dtype)  # (BH, bq, 1) running max
    l = qb.new_zeros(bh, bq, 1, dtype=acc_dtype)  # noqa: E741  (BH, bq, 1) running sum
    for chunk in plan.rows[i0 // plan.block_q]:
        j0, j1, _ = chunk
        s = _modify_and_mask(_raw_scores(qb, k[:, j0:j1], buf), plan, heads, i0, i1, chunk)  # (BH, bq, ck)
        if plan.weight == "sigmoid":
            _add_matmul(acc, _sigmoid_weights(s, plan.lk), v[:, j0:j1])
            continue
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (BH, bq, 1)
        m_use = m_new.masked_fill(m_new == -math.inf, 0.0)  # rows with nothing allowed yet
        p = _exp_(s.sub_(m_use), chunk[2] or bool(plan.mods))  # (BH, bq, ck); in place (no graph here)
        alpha = torch.exp(m - m_use)  # (BH, bq, 1) rescales what was accumulated so far
        l = torch.addcmul(p.sum(-1, keepdim=True), l, alpha)  # noqa: E741
        acc.mul_(alpha)
        _add_matmul(acc, _low(p, v.dtype, low), v[:, j0:j1])
        m = m_new
    if plan.weight == "sigmoid":
        return acc, acc.new_zeros(bh, bq, 1)
    alive = l > 0
    out = torch.where(alive, acc / torch.where(alive, l, 1.0), 0.0)  # (BH, bq, Dv)
    lse = torch.where(alive, m + torch.log(torch.where(alive, l, 1.0)), -math.inf)  # (BH, bq, 1)
    return out, lse


def _backward_block(qb: Tensor, k: Tensor, v: Tensor, dob: Tensor, lse_b: Tensor, delta_b: Tensor,
                    dk: Tensor, dv: Tensor, plan: BlockPlan, heads: int, i0: int, i1: int,
                    bufs: tuple[_TileBuffer, _TileBuffer, _TileBuffer | None]) -> Tensor:
    """Gradients of one query block: returns dq (BH, bq, D); adds into dk, dv (BH, S, D|Dv)."""
    acc_dtype = bufs[0].flat.dtype
    dqb = torch.zeros(qb.shape, dtype=acc_dtype, device=qb.device)  # (BH, bq, D)
    for chunk in plan.rows[i0 // plan.block_q]:
        j0, j1, _ = chunk
        kc, vc = k[:, j0:j1], v[:, j0:j1]  # (BH, ck, D), (BH, ck, Dv)
        raw = _raw_scores(qb, kc, bufs[0])  # (BH, bq, ck)
        if plan.grad_mods:  # differentiate through the modifiers on this tile
            raw = raw.clone().requires_grad_()
            with torch.enable_grad():
                s = _modify_and_mask(raw, plan, heads, i0, i1, chunk)
            p = _tile_probs(s.detach().clone(), lse_b, plan, chunk[2])
        else:
            s = _modify_and_mask(raw, plan, heads, i0, i1, chunk)
            p = _tile_probs(s, lse_b, plan, chunk[2])  # (BH, bq, ck), computed in place over s
        _add_matmul(dv[:, j0:j1], _low(p, v.dtype, bufs[2]).transpose(-2, -1), dob)
        dp = _raw_scores(dob, vc, bufs[1])  # (BH, bq, ck) = dO V^T
        if plan.weight == "sigmoid":
            ds = dp.mul_(p).mul_(1 - p)
        else:
            ds = dp.sub_(delta_b).mul_(p)  # (BH, bq, ck) = P * (dP - delta)
        if plan.grad_mods:
            (ds,) = torch.autograd.grad(s, raw, ds)
            ds = torch.nan_to_num(ds, nan=0.0)
        ds = _low(ds, kc.dtype, bufs[2])  # (BH, bq, ck)
        _add_matmul(dqb, ds, kc)
        _add_matmul(dk[:, j0:j1], ds.transpose(-2, -1), qb)
    return dqb


def _tile_probs(s: Tensor, lse_b: Tensor, plan: BlockPlan, masked: bool) -> Tensor:
    """Recomputed weights of a tile from its scores (and the saved lse for softmax), in place."""
    if plan.weight == "sigmoid":
        return s.sub_(math.log(plan.lk)).sigmoid_()
    return _exp_(s.sub_(lse_b), masked or bool(plan.mods))  # (BH, bq, ck); dead rows: lse = +inf -> 0


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _BlockwiseAttention(torch.autograd.Function):
    """``(q, k, v) -> (out, lse)`` with ``q`` already scaled; k, v have as many heads as q.
    Tensors are (B, H, L, D) outside and flattened to (BH, L, D) inside."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan) -> tuple[Tensor, Tensor]:
        bsz, heads = q.shape[:2]
        q3, k3, v3 = (x.reshape(bsz * heads, x.shape[2], x.shape[3]) for x in (q, k, v))  # (BH, L, D)
        acc_dtype = _acc_dtype(q.dtype)
        buf = _TileBuffer(bsz * heads, plan.block_q, plan.widest_chunk, acc_dtype, q.device)
        low = _TileBuffer(bsz * heads, plan.block_q, plan.widest_chunk, q.dtype, q.device) \
            if q.dtype != acc_dtype else None
        out = q.new_empty(bsz * heads, plan.lq, v.shape[-1])  # (BH, T, Dv)
        lse = q.new_empty(bsz * heads, plan.lq, 1, dtype=acc_dtype)  # (BH, T, 1)
        for i0 in range(0, plan.lq, plan.block_q):
            i1 = min(plan.lq, i0 + plan.block_q)
            out_b, lse_b = _forward_block(q3[:, i0:i1], k3, v3, plan, heads, i0, i1, buf, low)
            out[:, i0:i1] = out_b
            lse[:, i0:i1] = lse_b
        ctx.save_for_backward(q3, k3, v3, out, lse)
        ctx.plan, ctx.shape = plan, (bsz, heads)
        ctx.set_materialize_grads(False)
        return out.view(bsz, heads, plan.lq, -1), lse.view(bsz, heads, plan.lq, 1)

    @staticmethod
    def backward(ctx, dout: Tensor | None, dlse: Tensor | None):
        q, k, v, out, lse = ctx.saved_tensors  # (BH, T|S, D|Dv), lse (BH, T, 1)
        plan: BlockPlan = ctx.plan
        bsz, heads = ctx.shape
        acc_dtype = _acc_dtype(q.dtype)
        dout = torch.zeros_like(out) if dout is None else dout.reshape(out.shape)  # (BH, T, Dv)
        dk = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)  # (BH, S, D)
        dv = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)  # (BH, S, Dv)
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (BH, T, D)
        lse_safe = lse.masked_fill(lse == -math.inf, math.inf)  # dead rows: every weight 0
        delta = (dout.to(acc_dtype) * out.to(acc_dtype)).sum(-1, keepdim=True)  # (BH, T, 1)
        if dlse is not None:
            delta -= dlse.reshape(delta.shape).to(acc_dtype)
        ck = plan.widest_chunk
        bufs = (_TileBuffer(bsz * heads, plan.block_q, ck, acc_dtype, q.device),
                _TileBuffer(bsz * heads, plan.block_q, ck, acc_dtype, q.device),
                _TileBuffer(bsz * heads, plan.block_q, ck, q.dtype, q.device) if q.dtype != acc_dtype else None)
        for i0 in range(0, plan.lq, plan.block_q):
            i1 = min(plan.lq, i0 + plan.block_q)
            dq[:, i0:i1] = _backward_block(q[:, i0:i1], k, v, dout[:, i0:i1], lse_safe[:, i0:i1],
                                           delta[:, i0:i1], dk, dv, plan, heads, i0, i1, bufs)
        shape = lambda x: x.view(bsz, heads, *x.shape[1:])  # noqa: E731
        return shape(dq), shape(dk.to(k.dtype)), shape(dv.to(v.dtype)), None


# ----------------------------------------------------------------------------------------------
# the implementation behind attention()
# ----------------------------------------------------------------------------------------------


def _prepared_qk(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """``q`` multiplied by the scale (normalised first for cosine) and ``k`` (normalised for cosine)."""
    q, k, scale = call.q, call.k, call.scale
    if call.score.name == "cosine":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = scale / call.score.params["temperature"]
    return (q if scale == 1.0 else q * scale), k


def default_blocks(dtype: torch.dtype) -> tuple[int, int, int]:
    """Default ``(block_q, block_k, chunk_k)`` for inputs of ``dtype``."""
    return DEFAULT_BLOCKS["half" if dtype in (torch.float16, torch.bfloat16) else "float"]


def _option(call: AttentionCall, name: str, default: int) -> int:
    value = call.options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AttnKitError(f"option {name} must be a positive int; got {value!r}")
    return value


def _weights(call: AttentionCall, qs: Tensor, k: Tensor, lse: Tensor) -> Tensor:
    """The attention weights ``(B, H, T, S)`` recomputed from the scores and the saved lse
    (differentiable: the lse carries its own gradient back through the blockwise backward)."""
    acc_dtype = _acc_dtype(qs.dtype)
    s = torch.matmul(qs, k.transpose(-2, -1)).to(acc_dtype)  # (B, H, T, S)
    if call.score_mods:
        idx = _tile_indices(call.batch, call.heads, 0, call.lq, 0, call.lk, s.device)
        s = apply_mods(s, call.score_mods, *idx, call.lq, call.lk)
    allowed = s != -math.inf
    if call.mask is not None:
        allowed = allowed & call.mask.dense4(call.lq, call.lk, device=s.device)
    if call.weight.name == "sigmoid":
        w = _sigmoid_weights(s, call.lk)
    else:
        w = torch.exp(s - lse.masked_fill(lse == -math.inf, math.inf))
    return torch.where(allowed, w, 0.0).to(call.q.dtype)


def blockwise(call: AttentionCall) -> AttnResult:
    """Blockwise exact attention (see the module docstring). Options: ``block_q`` (query rows per
    block), ``block_k`` (key tile size used to classify the mask), ``chunk_k`` (most keys one
    matmul covers: consecutive tiles of one kind are merged up to this).

    Equivalent PyTorch code::

        out = reference(call)  # same result, without the (B, H, T, S) score matrix
    """
    n_rep = call.heads // call.kv_heads
    qs, k = _prepared_qk(call)
    k_rep, v_rep = repeat_kv(k, n_rep), repeat_kv(call.v, n_rep)
    bq, bk, ck = default_blocks(call.q.dtype)
    plan = plan_blocks(call.lq, call.lk, call.mask,
                       block_q=_option(call, "block_q", bq), block_k=_option(call, "block_k", bk),
                       chunk_k=_option(call, "chunk_k", ck),
                       mods=call.score_mods, weight=call.weight.name)
    out, lse = _BlockwiseAttention.apply(qs, k_rep, v_rep, plan)  # (B, H, T, Dv), (B, H, T, 1)
    return AttnResult(out,
                      _weights(call, qs, k_rep, lse) if call.return_weights else None,
                      lse.squeeze(-1) if call.return_lse else None)


def _tensors_needing_grad(mods: tuple[ScoreMod, ...]) -> bool:
    """Whether a modifier closes over a tensor that requires grad (e.g. a learned bias)."""
    for mod in mods:
        for cell in getattr(mod.fn, "__closure__", None) or ():
            try:
                val = cell.cell_contents
            except ValueError:
                continue
            if isinstance(val, Tensor) and val.requires_grad:
                return True
    return False


# The cost model behind impl="auto" (measured: benchmarks/bench_blockwise.py, docs/blockwise.md).
SMALL_PROBLEM = 256 * 256  # below this many (query, key) pairs the per-tile overhead loses to sdpa
DENSE_MASK_OK = 8192 * 8192  # up to here a dense bool mask for sdpa is affordable (64 MiB)
RESULTS = "benchmarks/results/blockwise_*.json"


def _sdpa_runs_fused(call: AttentionCall) -> bool:
    """Whether sdpa runs the call with its fused kernel and no dense mask or bias buffer."""
    if call.score_mods or call.weight.name != "softmax" or call.return_weights:
        return False
    m = call.mask
    return m is None or (isinstance(m, Causal) and (call.lq == call.lk or m.align == "top_left"))


def _unstructured(mask: Mask | None) -> bool:
    """Whether the mask has an arbitrary (element-wise) part, so few tiles can be skipped."""
    return mask is not None and any(isinstance(m, (Random, DenseMask, FromMod)) for m in mask.leaves())


def cost_reasons(call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` should prefer another implementation (measured thresholds)."""
    if _sdpa_runs_fused(call):
        return ["sdpa runs this mask fused without a dense buffer and is faster (blockwise takes "
                f"1.35-1.6x its time in float32, 1.1-1.3x in bfloat16, fwd+bwd at T=4k; {RESULTS})"]
    if call.return_weights:
        return ["return_weights=True materialises the T x S weights anyway: the reference computes them "
                "in one pass and is 1.3-4x faster (T = 512..4096, none / causal / window / padding masks)"]
    if call.lq * call.lk < SMALL_PROBLEM:
        return [f"small problem (T*S = {call.lq * call.lk} < {SMALL_PROBLEM}): per-tile overhead "
                f"outweighs the dense score matrix ({RESULTS})"]
    if _unstructured(call.mask) and call.lq * call.lk <= DENSE_MASK_OK and not call.score_mods \
            and call.weight.name == "softmax":
        return [f"arbitrary mask with no tiles to skip and T*S <= {DENSE_MASK_OK}: sdpa with the dense "
                f"mask is faster (blockwise takes 1.2-1.6x its time; {RESULTS})"]
    return []


def _check(call: AttentionCall) -> list[str]:
    reasons = []
    if call.score_mods and torch.is_grad_enabled() and _tensors_needing_grad(call.score_mods):
        reasons.append("a score modifier holds a tensor that requires grad (no gradient for it here)")
    return reasons


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
    options=frozenset({"block_q", "block_k", "chunk_k"}),
    priority=6,
    check=_check,
    auto_check=cost_reasons,
))
