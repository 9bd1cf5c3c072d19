"""``block_sparse``: attention computed only on the ``(block_q, block_k)`` tiles the mask keeps.

The mask's tiles come from the shared tile plan (:func:`attnkit.masks.plan.tile_plan`, analytic
for structured masks, so no ``T x S`` buffer). The kept tiles of each query-block row are packed
into *segments* of at most ``C`` tiles; a chunk of segments is one batched gather of key/value
blocks and two batched matmuls. Full tiles run unmasked, partial tiles apply their dense
sub-mask, and a row split over several segments is merged with the log-sum-exp (online
softmax) rule. The backward pass
recomputes the scores per chunk from the saved log-sum-exp (as FlashAttention does) and
scatters the key/value gradients back with ``index_add_``. Cost: proportional to the number of
kept tiles; memory: O(kept tiles) for the plan plus O(chunk) for the work space.

Grouped-query attention folds the query heads that share a kv head into the rows of one matmul.
Half-precision inputs are computed in float32. Rows whose keys are all masked give zeros; a NaN
or infinite score in an allowed position gives NaN for its row, as in PyTorch.

Options: ``block_q`` / ``block_k`` / ``block`` (tile sizes, default
:data:`attnkit.masks.base.DEFAULT_BLOCK`), ``chunk`` (score elements per chunk) and
``weights_format`` (``"dense"`` or ``"blocks"`` for ``return_weights``). With ``return_lse`` it
returns the per-row log-sum-exp, differentiable. The cost model (``cost_reasons``) only steers
``impl="auto"``; ``impl="block_sparse"`` always runs.

Layout: :mod:`.plan` (the kept tiles packed into segments), :mod:`.tiles` (the PyTorch tile
computation, forward and backward), this module (layouts, weights, the entry point, which hands
large calls to the native kernel, and registration).

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim, Dv value dim,
nQ / nK query / key blocks, nS segments, C tiles per segment, R = (H / Hkv) * block_q rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...call import AttentionCall
from ...kernels.tiles import kernel_form, kernel_usable
from ...masks.base import DEFAULT_BLOCK
from ...masks.plan import tile_plan
from ...registry import AttnResult, ImplSpec, register_impl
from .._common import Option, compute_dtype, holds_grad_tensor, on_kernel, prepared_qk, read_options, sdpa_can_run
from .plan import SlicePlan, plan_for
from .tiles import _BlockSparseFn, _chunks, _gather, _heads, _Problem, _scores

__all__ = ["block_sparse", "BlockWeights", "plan_for", "SlicePlan", "OPTIONS", "MAX_BLOCK_DENSITY", "MIN_LENGTH"]

DEFAULT_CHUNK = 1 << 20  # score elements per chunk and head (4 MiB in float32; measured best at T = 16k)
MAX_BLOCK_DENSITY = 0.5  # above: auto prefers dense sdpa (break-even measured near 0.6 at T = 4k)
MIN_LENGTH = 1024  # below this many keys auto prefers dense sdpa (overheads dominate)

OPTIONS = {
    "block": Option(int, DEFAULT_BLOCK, "tile size of queries and keys", minimum=1),
    "block_q": Option(int, None, "query rows per tile (default: block)", minimum=1),
    "block_k": Option(int, None, "keys per tile (default: block)", minimum=1),
    "chunk": Option(int, DEFAULT_CHUNK, "score elements per chunk and head", minimum=1),
    "weights_format": Option(str, "dense", "layout of return_weights", choices=("dense", "blocks")),
    "kernel": Option(str, "auto", "who computes the tiles: 'auto' (the native C++ kernel where it is available, "
                     "for softmax calls without weights whose score modifiers are all built-in bias / alibi / softcap, "
                     "T x S >= 2**20), 'torch' (always PyTorch)",
                     choices=("auto", "torch")),
}



# ----------------------------------------------------------------------------------------------
# layouts, weights, the implementation entry point
# ----------------------------------------------------------------------------------------------


def _layout_q(q: Tensor, hkv: int, bq: int, n_q: int) -> Tensor:
    """``(Bs, H, T, D)`` -> ``(Bs, Hkv, nQ, rep * bq, D)``: the query heads of one kv head share rows."""
    bs, h, t, d = q.shape
    rep = h // hkv
    x = (F.pad(q, (0, 0, 0, n_q * bq - t)) if n_q * bq != t else q.contiguous()).view(bs, hkv, rep, n_q, bq, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(bs, hkv, n_q, rep * bq, d)


def _layout_kv(k: Tensor, bk: int, n_k: int) -> Tensor:
    """``(Bs, Hkv, S, D)`` -> ``(Bs, Hkv, nK, bk, D)`` (zero-padded to whole blocks)."""
    bs, hkv, s, d = k.shape
    if n_k * bk != s:
        k = F.pad(k, (0, 0, 0, n_k * bk - s))
    return k.contiguous().view(bs, hkv, n_k, bk, d)


def _unlayout(x: Tensor, heads: int, t: int) -> Tensor:
    """``(Bs, Hkv, nQ, rep * bq, E)`` -> ``(Bs, H, T, E)``."""
    bs, hkv, n_q, r, e = x.shape
    rep = heads // hkv
    bq = r // rep
    return x.view(bs, hkv, n_q, rep, bq, e).permute(0, 1, 3, 2, 4, 5).reshape(bs, heads, n_q * bq, e)[:, :, :t]


@dataclass(frozen=True, eq=False)
class BlockWeights:
    """Attention weights in tile form: ``values[n]`` is the ``(block_q, block_k)`` tile of batch
    ``tiles[n, 0]``, head ``tiles[n, 1]``, query block ``tiles[n, 2]``, key block ``tiles[n, 3]``;
    every tile not listed is zero. Positions past ``lq`` / ``lk`` are zero."""

    tiles: Tensor  # (n, 4) int64
    values: Tensor  # (n, block_q, block_k)
    batch: int
    heads: int
    lq: int
    lk: int
    block_q: int
    block_k: int

    def to_dense(self) -> Tensor:
        """The dense weights ``(B, H, lq, lk)``."""
        n_q, n_k = math.ceil(self.lq / self.block_q), math.ceil(self.lk / self.block_k)
        w = self.values.new_zeros(self.batch, self.heads, n_q, n_k, self.block_q, self.block_k)
        b, h, qi, ki = self.tiles.unbind(1)
        w[b, h, qi, ki] = self.values
        w = w.permute(0, 1, 2, 4, 3, 5).reshape(self.batch, self.heads, n_q * self.block_q, n_k * self.block_k)
        return w[:, :, : self.lq, : self.lk]


def _weight_tiles(pb: _Problem, qp: Tensor, kp: Tensor, lse: Tensor):
    """Per chunk: the chunk and the normalised weights ``(Bs, Hkv, nSc, C, rep, bq, bk)`` of its
    tiles (zero on padding slots)."""
    plan = pb.plan
    bs, hkv = qp.shape[:2]
    for ch in _chunks(pb, qp.shape[3]):
        per_head = []
        for bi, hi in _heads(qp):
            qg, kg, _ = _gather(pb, ch, qp[bi, hi], kp[bi, hi], kp[bi, hi])
            s, _ = _scores(pb, ch, bi, hi, qg, kg)
            per_head.append(torch.exp(s - lse[bi, hi, ch.sq].unsqueeze(-1)))  # (nSc, R, C*bk)
        p = torch.stack(per_head).view(bs, hkv, ch.hi - ch.lo, pb.rep, pb.bq, plan.slots, pb.bk)
        yield ch, p.permute(0, 1, 2, 5, 3, 4, 6)


def _dense_weights(pb: _Problem, qp: Tensor, kp: Tensor, lse: Tensor) -> Tensor:
    """Dense weights ``(Bs, H, T, S)`` of one slice."""
    bs, hkv = qp.shape[:2]
    plan = pb.plan
    w7 = qp.new_zeros(plan.n_q, plan.n_k, bs, hkv, pb.rep, pb.bq, pb.bk)
    for ch, p in _weight_tiles(pb, qp, kp, lse):  # padding slots add zeros to block 0
        w7.index_put_((ch.sq.view(-1, 1).expand_as(ch.sk), ch.sk), p.permute(2, 3, 0, 1, 4, 5, 6), accumulate=True)
    w = w7.permute(2, 3, 4, 0, 5, 1, 6).reshape(bs, hkv * pb.rep, plan.n_q * pb.bq, plan.n_k * pb.bk)
    return w[:, :, : pb.lq, : pb.lk]


def _block_weights(pb: _Problem, qp: Tensor, kp: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Tile list ``(n, 4)`` and values ``(n, bq, bk)`` of one slice (padding slots dropped)."""
    bs, hkv = qp.shape[:2]
    tiles, values = [], []
    bh = torch.stack(torch.broadcast_tensors(pb.b_ids.view(-1, 1, 1), pb.h_ids.unsqueeze(0)), -1)  # (Bs, Hkv, rep, 2)
    bh = bh.reshape(-1, 2)  # (Bs * H, 2) in (b, kv head, replica) order
    for ch, p in _weight_tiles(pb, qp, kp, lse):
        sq, sk = ch.sq, ch.sk
        valid = ch.slib != 0  # (nSc, C) padding slots have library entry 0
        p = p.permute(0, 1, 4, 2, 3, 5, 6).reshape(bs * hkv * pb.rep, len(sq), pb.plan.slots, pb.bq, pb.bk)
        values.append(p[:, valid].flatten(0, 1))  # (Bs * H * nv, bq, bk)
        qk = torch.stack([sq.view(-1, 1).expand_as(sk)[valid], sk[valid]], -1)  # (nv, 2)
        tiles.append(torch.cat([bh.repeat_interleave(len(qk), 0), qk.repeat(len(bh), 1)], 1))
    if not tiles:
        return torch.zeros(0, 4, dtype=torch.int64), qp.new_zeros(0, pb.bq, pb.bk)
    return torch.cat(tiles), torch.cat(values)


def _blocks(call: AttentionCall) -> tuple[int, int, int, str]:
    """``(block_q, block_k, chunk, weights_format)`` from the call's options."""
    opts = read_options(call, "block_sparse", OPTIONS)
    bq = opts["block"] if opts["block_q"] is None else opts["block_q"]
    bk = opts["block"] if opts["block_k"] is None else opts["block_k"]
    return bq, bk, opts["chunk"], opts["weights_format"]


def _unlayout_rows(x: Tensor, heads: int, t: int) -> Tensor:
    """``(Bs, Hkv, nQ, rep * bq)`` -> ``(Bs, H, T)``: per-row values (the log-sum-exp)."""
    return _unlayout(x.unsqueeze(-1), heads, t).squeeze(-1)



def block_sparse(call: AttentionCall) -> AttnResult:
    """Attention over the kept tiles of ``call.mask`` only.

    Equivalent PyTorch code (what it computes, not how)::

        s = (q @ repeat_kv(k).transpose(-2, -1)) * scale        # only on kept tiles
        out = softmax(s.masked_fill(~mask.dense(T, S), -inf)) @ repeat_kv(v)
    """
    bq, bk, chunk, fmt = _blocks(call)
    mods = kernel_form(call.score_mods)
    if (read_options(call, "block_sparse", OPTIONS)["kernel"] == "auto" and mods is not None
            and not call.return_weights and kernel_usable(device=call.q.device, head_dim=max(call.head_dim, call.v_dim),
                                                          block_q=bq, block_k=bk, work=call.lq * call.lk)):
        return on_kernel(call, bq, bk, mods)
    dtype = compute_dtype(call.q.dtype)
    q, k, scale = prepared_qk(call, dtype)
    v = call.v.to(dtype)
    if not any(not m.additive for m in call.score_mods):  # fold the scale into q (one pass fewer)
        q, scale = q * scale, 1.0
    plans = plan_for(call.mask, call.lq, call.lk, bq, bk)
    n_q, n_k = plans[0][0].n_q, plans[0][0].n_k
    rep = call.heads // call.kv_heads
    all_b, all_h = torch.arange(call.batch), torch.arange(call.heads).view(call.kv_heads, rep)
    out_rows, lse_rows, w_rows, tiles, values = [], [], [], [], []
    for bm, row in enumerate(plans):
        bsel = slice(bm, bm + 1) if len(plans) > 1 else slice(None)
        outs, lses, ws = [], [], []
        for hm, plan in enumerate(row):
            if len(row) > 1:  # head-dependent mask: one query head with its kv head
                qs, ks, vs = q[bsel, hm:hm + 1], k[bsel, hm // rep:hm // rep + 1], v[bsel, hm // rep:hm // rep + 1]
                h_ids = torch.tensor([[hm]])
            else:
                qs, ks, vs, h_ids = q[bsel], k[bsel], v[bsel], all_h
            pb = _Problem(plan, scale, call.score_mods, all_b[bsel], h_ids, call.lq, call.lk, bq, bk, chunk)
            qp, kp, vp = _layout_q(qs, ks.shape[1], bq, n_q), _layout_kv(ks, bk, n_k), _layout_kv(vs, bk, n_k)
            need_lse = call.return_weights or call.return_lse or (torch.is_grad_enabled() and any(
                x.requires_grad for x in (qp, kp, vp)))
            out_p, lse = _BlockSparseFn.apply(qp, kp, vp, pb, need_lse)
            outs.append(_unlayout(out_p, qs.shape[1], call.lq))
            if call.return_lse:
                lses.append(_unlayout_rows(lse, qs.shape[1], call.lq))
            if call.return_weights:
                with torch.no_grad():
                    if fmt == "dense":
                        ws.append(_dense_weights(pb, qp.detach(), kp.detach(), lse.detach()))
                    else:
                        t, val = _block_weights(pb, qp.detach(), kp.detach(), lse.detach())
                        tiles.append(t)
                        values.append(val)
        for rows, parts in ((out_rows, outs), (lse_rows, lses), (w_rows, ws)):
            if parts:
                rows.append(torch.cat(parts, 1) if len(parts) > 1 else parts[0])
    cat = lambda rows: torch.cat(rows, 0) if len(rows) > 1 else rows[0]  # noqa: E731
    out = cat(out_rows).to(call.q.dtype)
    lse = None
    if call.return_lse:
        lse = cat(lse_rows)
        lse = torch.where(lse == math.inf, -math.inf, lse)  # dead rows: -inf, with zero gradient
    if not call.return_weights:
        return AttnResult(out, None, lse)
    if fmt == "blocks":
        return AttnResult(out, BlockWeights(torch.cat(tiles), torch.cat(values).to(call.q.dtype), call.batch,
                                            call.heads, call.lq, call.lk, bq, bk), lse)
    return AttnResult(out, cat(w_rows).to(call.q.dtype), lse)


# ----------------------------------------------------------------------------------------------
# cost model and registration
# ----------------------------------------------------------------------------------------------


def _check(call: AttentionCall) -> list[str]:
    if call.score_mods and torch.is_grad_enabled() and holds_grad_tensor(call.score_mods):
        return ["a score modifier holds a tensor that requires grad; block_sparse differentiates q, k, v only"]
    return []


def cost_reasons(call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` should prefer dense sdpa (thresholds measured with
    benchmarks/bench_block_sparse.py; the numbers are in docs/sparse.md). None when sdpa cannot run
    the call (``return_lse``, for one)."""
    if not sdpa_can_run(call):
        return []
    if call.mask is None:
        return ["no mask: every tile is kept, dense sdpa is faster"]
    if call.lk < MIN_LENGTH:
        return [f"S = {call.lk} < {MIN_LENGTH}: dense sdpa is faster at this size"]
    bq, bk, _, _ = _blocks(call)
    dens = tile_plan(call.mask, call.lq, call.lk, bq, bk).density()
    if dens > MAX_BLOCK_DENSITY:
        return [f"block density {dens:.2f} > {MAX_BLOCK_DENSITY}: dense sdpa is faster here"]
    return []


register_impl(ImplSpec(
    name="block_sparse",
    fn=block_sparse,
    description="computes only the mask's kept (block_q, block_k) tiles; online softmax across a row's tiles",
    scores=frozenset({"scaled_dot", "dot", "cosine"}),
    weights=frozenset({"softmax"}),
    score_mods="any",
    dropout=False,
    returns_lse=True,
    options=frozenset(OPTIONS),
    priority=5,
    check=_check,
    auto_check=cost_reasons,
))
