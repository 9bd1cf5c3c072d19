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

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim, Dv value dim,
nQ / nK query / key blocks, nS segments, C tiles per segment, R = (H / Hkv) * block_q rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from ..kernels.tiles import kernel_form, kernel_usable
from ..masks import EMPTY, FULL, PARTIAL, Mask
from ..masks.base import DEFAULT_BLOCK
from ..masks.plan import BlockMask, tile_plan
from ..registry import AttnResult, ImplSpec, register_impl
from ..scores import ScoreMod, apply_mods
from ._common import Option, compute_dtype, holds_grad_tensor, on_kernel, prepared_qk, read_options, sdpa_can_run

__all__ = ["block_sparse", "BlockWeights", "plan_for", "SlicePlan", "OPTIONS", "MAX_BLOCK_DENSITY", "MIN_LENGTH"]

DEFAULT_CHUNK = 1 << 20  # score elements per chunk and head (4 MiB in float32; measured best at T = 16k)
MAX_SEG_TILES = 64  # at most this many tiles per segment
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
# the plan: which tiles, packed into segments
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SlicePlan:
    """The kept tiles of one mask slice (one batch/head of a batch/head-dependent mask, or all).

    ``seg_q (nS,)`` query block of each segment; ``seg_k (nS, C)`` its key blocks (padding slots read
    block 0, fully masked); ``seg_lib (nS, C)`` index into ``blocked (L, block_q, block_k)``, where
    True = masked out (entry 0: all masked, 1: none masked); ``masked (nS,)`` whether a segment
    needs any masking; ``band (nS,)`` whether a segment reads ``C`` consecutive key blocks
    (then a strided view replaces the gather); ``dead (nS,)`` whether a segment may hold a query
    row with no allowed key; ``single`` whether every query block has exactly one segment.
    """

    seg_q: Tensor
    seg_k: Tensor
    seg_lib: Tensor
    blocked: Tensor
    masked: Tensor
    band: Tensor
    dead: Tensor
    single: bool
    n_q: int
    n_k: int
    tiles: int  # kept tiles
    full_tiles: int

    @property
    def slots(self) -> int:
        """Tiles per segment ``C``."""
        return self.seg_k.shape[1]


def _tile_sizes_valid(lq: int, lk: int, bq: int, bk: int) -> Tensor:
    """``(bq, bk)`` bool: positions of the last-column tile that lie before ``lk``."""
    j = torch.arange(bk).view(1, bk)
    rem = lk - (math.ceil(lk / bk) - 1) * bk
    return (j < rem).expand(bq, bk)


def _segments(qi: Tensor, n_q: int, cap: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Pack tiles sorted by query block ``qi (n,)`` into segments of at most ``C`` tiles.

    Returns the segment and slot of each tile, ``seg_q (nS,)`` and ``C``."""
    counts = torch.bincount(qi, minlength=n_q)  # (nQ,)
    live = counts[counts > 0].float()
    if len(live) == 0:
        return qi.new_zeros(0), qi.new_zeros(0), qi.new_zeros(0), 1
    c = int(min(int(counts.max()), max(1, math.ceil(float(torch.quantile(live, 0.9)))), cap))
    starts = torch.cumsum(counts, 0) - counts  # (nQ,) first tile of each row
    pos = torch.arange(len(qi)) - starts[qi]  # (n,) position within the row
    nseg = (counts + c - 1) // c  # (nQ,)
    seg_start = torch.cumsum(nseg, 0) - nseg
    seg = seg_start[qi] + pos // c
    seg_q = torch.repeat_interleave(torch.arange(n_q), nseg)
    return seg, pos % c, seg_q, c


def build_plan(bm: BlockMask, b: int, h: int) -> SlicePlan:
    """The plan of slice ``(b, h)`` of the tile plan ``bm`` (kinds ``(Bm, Hm, nQ, nK)``): partial
    tiles are evaluated once (their sub-masks become the ``blocked`` library), empty ones dropped."""
    lq, lk, bq, bk = bm.lq, bm.lk, bm.block_q, bm.block_k
    n_q, n_k = bm.shape
    k2 = bm.kinds[b, h]
    tiles = (k2 != EMPTY).nonzero()  # (n, 2) rows (qi, ki), sorted by qi then ki
    kind = k2[tiles[:, 0], tiles[:, 1]]
    lib_id = torch.ones(len(tiles), dtype=torch.int64)  # 1: nothing masked
    edge = _tile_sizes_valid(lq, lk, bq, bk)
    library = [torch.ones(1, bq, bk, dtype=torch.bool), torch.zeros(1, bq, bk, dtype=torch.bool)]
    if lk % bk:  # the last key block of a full tile row still stops at lk
        library.append((~edge).unsqueeze(0))
        lib_id[(tiles[:, 1] == n_k - 1) & (kind == FULL)] = 2
    part = (kind == PARTIAL).nonzero().flatten()
    keep = torch.ones(len(tiles), dtype=torch.bool)
    if len(part):
        rows = torch.stack([torch.full_like(part, b), torch.full_like(part, h),
                            tiles[part, 0], tiles[part, 1]], 1)  # (nP, 4)
        sub = bm.tile_mask(rows)  # (nP, bq, bk) True = attend
        keep[part[~sub.flatten(1).any(-1)]] = False  # partial by bounds, empty in fact
        lib_id[part] = sum(len(x) for x in library) + torch.arange(len(part))
        library.append(~sub)
    tiles, lib_id = tiles[keep], lib_id[keep]
    seg, slot, seg_q, c = _segments(tiles[:, 0], n_q, MAX_SEG_TILES)
    n_s = len(seg_q)
    seg_k = torch.zeros((n_s, c), dtype=torch.int64)  # padding slots read block 0, fully masked
    seg_lib = torch.zeros((n_s, c), dtype=torch.int64)
    seg_k[seg, slot] = tiles[:, 1]
    seg_lib[seg, slot] = lib_id
    # a "band" segment reads C consecutive key blocks: no gather needed, a strided view will do
    band = (seg_lib != 0).all(-1) & (seg_k == seg_k[:, :1] + torch.arange(c)).all(-1)
    # segments with padding slots (short rows) go last, so they share chunks
    seg_order = torch.argsort((~band).to(torch.int64) * n_s + torch.arange(n_s))
    seg_q, seg_k, seg_lib, band = seg_q[seg_order], seg_k[seg_order], seg_lib[seg_order], band[seg_order]
    blocked = torch.cat(library)
    row_alive = (~blocked).any(-1)  # (L, bq) rows of each library entry that keep a key
    dead = ~row_alive[seg_lib].any(1).all(-1) if n_s else torch.zeros(0, dtype=torch.bool)  # (nS,)
    single = n_s == n_q and bool((torch.bincount(seg_q, minlength=n_q) == 1).all())
    return SlicePlan(seg_q, seg_k, seg_lib, blocked, (seg_lib != 1).any(-1), band, dead, single, n_q, n_k,
                     len(tiles), int((lib_id == 1).sum()))


def _slice_plans(bm: BlockMask) -> list[list[SlicePlan]]:
    return [[build_plan(bm, b, h) for h in range(bm.kinds.shape[1])] for b in range(bm.kinds.shape[0])]


def plan_for(mask: Mask | None, lq: int, lk: int, bq: int = DEFAULT_BLOCK,
             bk: int = DEFAULT_BLOCK) -> list[list[SlicePlan]]:
    """Plans ``[bm][hm]`` for every slice of ``mask``: a view of the shared tile plan
    (:func:`attnkit.masks.plan.tile_plan`), derived once and kept with it."""
    return tile_plan(mask, lq, lk, bq, bk).derive(("block_sparse",), _slice_plans)


# ----------------------------------------------------------------------------------------------
# the kernel: per head, chunks of segments, forward and backward
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Problem:
    """What the kernel needs besides the tensors (one mask slice)."""

    plan: SlicePlan
    scale: float
    mods: tuple[ScoreMod, ...]
    b_ids: Tensor  # (Bs,) batch index of each batch row (for score mods)
    h_ids: Tensor  # (Hkv, rep) query head index of each (kv head, replica)
    lq: int
    lk: int
    bq: int
    bk: int
    chunk: int

    @property
    def rep(self) -> int:
        return self.h_ids.shape[1]


@dataclass(frozen=True, eq=False)
class _Chunk:
    """Segments ``[lo, hi)``: their query blocks ``sq (nSc,)``, key blocks ``sk (nSc, C)``,
    library ids ``slib (nSc, C)``, the slot ranges to mask, the first query block when ``sq`` is
    consecutive and the first key block when the segments form a band (else None)."""

    lo: int
    hi: int
    sq: Tensor
    sk: Tensor
    slib: Tensor
    mask_runs: list[tuple[int, int]]
    q_start: int | None
    band_start: int | None
    dead: bool


def _chunks(pb: _Problem, rows_per_seg: int) -> list[_Chunk]:
    """The chunks of at most ``pb.chunk`` score elements per head; band and gathered segments
    (ordered apart by the plan) are never mixed in one chunk."""
    plan = pb.plan
    n_s = len(plan.seg_q)
    per = max(1, pb.chunk // max(1, rows_per_seg * plan.slots * pb.bk))
    n_band = int(plan.band.sum())
    bounds = [(s, min(n_band, s + per)) for s in range(0, n_band, per)]
    bounds += [(s, min(n_s, s + per)) for s in range(n_band, n_s, per)]
    out = []
    for lo, hi in bounds:
        sq, sk, slib = plan.seg_q[lo:hi], plan.seg_k[lo:hi], plan.seg_lib[lo:hi]
        consecutive = lambda x: len(x) == 1 or bool((x.diff() == 1).all())  # noqa: E731
        q_start = int(sq[0]) if consecutive(sq) else None
        band = lo < n_band and consecutive(sk[:, 0])
        out.append(_Chunk(lo, hi, sq, sk, slib, _runs((slib != 1).any(0).tolist()), q_start,
                          int(sk[0, 0]) if band else None, bool(plan.dead[lo:hi].any())))
    return out


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """Maximal ranges ``[a, b)`` where ``flags`` is True."""
    out, start = [], None
    for n, f in enumerate([*flags, False]):
        if f and start is None:
            start = n
        elif not f and start is not None:
            out.append((start, n))
            start = None
    return out


def _gather(pb: _Problem, ch: _Chunk, qh: Tensor, kh: Tensor, vh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One head's query rows ``(nSc, R, D)``, keys ``(nSc, C*bk, D)`` and values ``(nSc, C*bk, Dv)``
    of a chunk; band chunks read keys and values through an overlapping strided view (no copy)."""
    n = ch.hi - ch.lo
    qg = qh[ch.q_start:ch.q_start + n] if ch.q_start is not None else qh[ch.sq]
    if ch.band_start is not None:
        return qg, _band_view(kh, ch.band_start, n, pb.plan.slots), _band_view(vh, ch.band_start, n, pb.plan.slots)
    return qg, kh[ch.sk].flatten(1, 2), vh[ch.sk].flatten(1, 2)


def _band_view(kh: Tensor, start: int, n_seg: int, c: int) -> Tensor:
    """``(nSeg, C*bk, D)``: key blocks ``start + s .. start + s + C - 1`` for segment ``s`` of
    ``kh (nK, bk, D)``, as a view with overlapping rows."""
    _, bk, d = kh.shape
    st = kh.stride()
    return kh.as_strided((n_seg, c * bk, d), (st[0], st[1], st[2]), kh.storage_offset() + start * st[0])


def _mod_indices(pb: _Problem, ch: _Chunk, bi: int, hi: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index tensors ``b, h, i, j`` broadcasting to one head's scores ``(nSc, rep, bq, C*bk)``."""
    n_sc = ch.hi - ch.lo
    b = pb.b_ids[bi].to(device).view(1, 1, 1, 1)
    h = pb.h_ids[hi].to(device).view(1, pb.rep, 1, 1)
    i = (ch.sq.view(-1, 1) * pb.bq + torch.arange(pb.bq)).clamp(max=pb.lq - 1)  # (nSc, bq)
    j = (ch.sk.unsqueeze(-1) * pb.bk + torch.arange(pb.bk)).clamp(max=pb.lk - 1)  # (nSc, C, bk)
    return b, h, i.to(device).view(n_sc, 1, pb.bq, 1), j.to(device).view(n_sc, 1, 1, -1)


def _scores(pb: _Problem, ch: _Chunk, bi: int, hi: int, qg: Tensor, kg: Tensor,
            raw_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """One head's modified, masked scores ``(nSc, R, C*bk)`` of a chunk.

    With ``raw_grad`` also returns the unmodified scores as a leaf requiring grad (the modified
    scores are then a function of it, for the backward of non-additive score modifiers)."""
    with torch.no_grad():
        s = torch.matmul(qg, kg.transpose(-1, -2))  # (nSc, R, C*bk)
        if pb.scale != 1.0:
            s.mul_(pb.scale)
    raw = None
    if pb.mods:
        if raw_grad:
            raw = s.requires_grad_()
        shape4 = (s.shape[0], pb.rep, pb.bq, s.shape[-1])
        s = apply_mods(s.view(shape4), pb.mods, *_mod_indices(pb, ch, bi, hi, s.device), pb.lq, pb.lk)
        s = s.reshape(shape4[0], pb.rep * pb.bq, shape4[-1])
    if ch.mask_runs:
        if raw is not None:
            s = s.clone()
        s5 = s.view(s.shape[0], pb.rep, pb.bq, pb.plan.slots, pb.bk)
        for a, b in ch.mask_runs:
            blocked = pb.plan.blocked.to(s.device)[ch.slib[:, a:b]]  # (nSc, b - a, bq, bk)
            s5[..., a:b, :].masked_fill_(blocked.permute(0, 2, 1, 3).unsqueeze(1), -math.inf)
    return s, raw


def _heads(qp: Tensor):
    """All ``(batch row, kv head)`` pairs of ``qp (Bs, Hkv, ...)``."""
    return [(bi, hi) for bi in range(qp.shape[0]) for hi in range(qp.shape[1])]


def _forward(pb: _Problem, qp: Tensor, kp: Tensor, vp: Tensor, need_lse: bool = True) -> tuple[Tensor, Tensor]:
    """Output ``(Bs, Hkv, nQ, R, Dv)`` and per-row log-sum-exp ``(Bs, Hkv, nQ, R)`` (+inf: dead row,
    NaN: a row that met a NaN or +inf score).

    Without ``need_lse`` (inference), one-segment rows with no dead row take one fused softmax and
    the log-sum-exp is not returned (an empty tensor instead)."""
    plan = pb.plan
    bs, hkv, n_q, r, _ = qp.shape
    dv = vp.shape[-1]
    n_s = len(plan.seg_q)
    chunks = _chunks(pb, r)
    if plan.single and not need_lse and not any(ch.dead for ch in chunks):
        out = qp.new_empty(bs, hkv, n_q, r, dv)
        for bi, hi in _heads(qp):
            for ch in chunks:
                qg, kg, vg = _gather(pb, ch, qp[bi, hi], kp[bi, hi], vp[bi, hi])
                s, _ = _scores(pb, ch, bi, hi, qg, kg)  # (nSc, R, C*bk)
                p = torch.softmax(s, -1)  # (nSc, R, C*bk), one fused pass per row
                rows = ch.sq if ch.q_start is None else slice(ch.q_start, ch.q_start + ch.hi - ch.lo)
                if ch.q_start is None:
                    out[bi, hi].index_copy_(0, ch.sq, torch.matmul(p, vg))
                else:
                    torch.matmul(p, vg, out=out[bi, hi, rows])  # (nSc, R, Dv)
        return out, qp.new_empty(0)
    o_seg = qp.new_empty(bs, hkv, n_s, r, dv)
    m_seg = qp.new_empty(bs, hkv, n_s, r)
    l_seg = qp.new_empty(bs, hkv, n_s, r)
    for bi, hi in _heads(qp):
        for ch in chunks:
            qg, kg, vg = _gather(pb, ch, qp[bi, hi], kp[bi, hi], vp[bi, hi])
            s, _ = _scores(pb, ch, bi, hi, qg, kg)  # (nSc, R, C*bk)
            m = s.amax(-1, keepdim=True)  # (nSc, R, 1)
            m.masked_fill_(m == -math.inf, 0.0)
            p = s.sub_(m).exp_()  # (nSc, R, C*bk)
            torch.sum(p, -1, out=l_seg[bi, hi, ch.lo:ch.hi])
            m_seg[bi, hi, ch.lo:ch.hi] = m.squeeze(-1)
            torch.matmul(p, vg, out=o_seg[bi, hi, ch.lo:ch.hi])  # (nSc, R, Dv)
    tiny = torch.finfo(qp.dtype).tiny
    sq = plan.seg_q.to(qp.device)
    if plan.single:  # one segment per query block: nothing to merge, only to put in place
        out = torch.empty_like(o_seg).index_copy_(2, sq, o_seg.div_(l_seg.clamp(min=tiny).unsqueeze(-1)))
        lse = torch.where(l_seg == 0, math.inf, m_seg + torch.log(l_seg.clamp(min=tiny)))  # NaN stays NaN
        return out, torch.empty_like(lse).index_copy_(2, sq, lse)
    # online softmax across the segments of a row: rescale each to the row maximum and add up
    idx = sq.view(1, 1, -1, 1).expand_as(m_seg)
    m_row = qp.new_full((bs, hkv, n_q, r), -math.inf).scatter_reduce_(2, idx, m_seg, "amax")
    factor = torch.exp(m_seg - m_row[:, :, sq])  # (Bs, Hkv, nS, R)
    l_row = qp.new_zeros(bs, hkv, n_q, r).index_add_(2, sq, l_seg * factor)
    out = qp.new_zeros(bs, hkv, n_q, r, dv).index_add_(2, sq, o_seg * factor.unsqueeze(-1))
    out /= l_row.clamp(min=tiny).unsqueeze(-1)
    lse = torch.where(l_row == 0, math.inf, m_row + torch.log(l_row.clamp(min=tiny)))  # NaN stays NaN
    return out, lse


def _backward(pb: _Problem, qp, kp, vp, out, lse, d_out, d_lse) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for ``qp``, ``kp``, ``vp`` by recomputing each chunk's probabilities from ``lse``;
    ``d_lse`` (or None) is the gradient of the returned log-sum-exp (``d lse / d s = p``)."""
    delta = (d_out * out).sum(-1)  # (Bs, Hkv, nQ, R)
    if d_lse is not None:
        delta = delta - d_lse
    dq, dk, dv = torch.zeros_like(qp), torch.zeros_like(kp), torch.zeros_like(vp)
    nonadditive = any(not m.additive for m in pb.mods)
    chunks = _chunks(pb, qp.shape[3])
    for bi, hi in _heads(qp):
        for ch in chunks:
            qg, kg, vg = _gather(pb, ch, qp[bi, hi], kp[bi, hi], vp[bi, hi])
            with torch.enable_grad() if nonadditive else torch.no_grad():
                s, raw = _scores(pb, ch, bi, hi, qg, kg, raw_grad=nonadditive)
            rows = ch.sq if ch.q_start is None else slice(ch.q_start, ch.q_start + ch.hi - ch.lo)
            p = s.detach().sub_(lse[bi, hi, rows].unsqueeze(-1)).exp_() if raw is None else \
                torch.exp(s.detach() - lse[bi, hi, rows].unsqueeze(-1))  # (nSc, R, C*bk)
            do_g = d_out[bi, hi, rows]  # (nSc, R, Dv)
            flat_k = ch.sk.flatten()
            dv_g = torch.matmul(p.transpose(-1, -2), do_g)  # (nSc, C*bk, Dv)
            dv[bi, hi].index_add_(0, flat_k, dv_g.view(len(flat_k), pb.bk, -1))
            dp = torch.matmul(do_g, vg.transpose(-1, -2))  # (nSc, R, C*bk)
            ds = p.mul_(dp.sub_(delta[bi, hi, rows].unsqueeze(-1)))  # (nSc, R, C*bk)
            if nonadditive:
                ds = torch.autograd.grad(s, raw, ds)[0]
            if pb.scale != 1.0:
                ds.mul_(pb.scale)
            dq_g = torch.matmul(ds, kg)  # (nSc, R, D)
            if ch.q_start is None:
                dq[bi, hi].index_add_(0, ch.sq, dq_g)
            else:
                dq[bi, hi, rows] += dq_g
            dk_g = torch.matmul(ds.transpose(-1, -2), qg)  # (nSc, C*bk, D)
            dk[bi, hi].index_add_(0, flat_k, dk_g.view(len(flat_k), pb.bk, -1))
    return dq, dk, dv


class _BlockSparseFn(torch.autograd.Function):
    """``(qp, kp, vp) -> (out, lse)`` in the layouts of :func:`_layout_q` / :func:`_layout_kv`;
    ``lse`` is +inf on dead rows (the caller turns that into -inf) and empty without ``need_lse``."""

    @staticmethod
    def forward(ctx, qp, kp, vp, pb, need_lse):
        out, lse = _forward(pb, qp, kp, vp, need_lse)
        ctx.save_for_backward(qp, kp, vp, out, lse)
        ctx.pb = pb
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        qp, kp, vp, out, lse = ctx.saved_tensors
        d_out = torch.zeros_like(out) if d_out is None else d_out.contiguous()
        dq, dk, dv = _backward(ctx.pb, qp, kp, vp, out, lse, d_out, d_lse)
        return dq, dk, dv, None, None


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
