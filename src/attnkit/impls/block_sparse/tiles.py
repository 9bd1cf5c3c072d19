"""The PyTorch tile computation of ``block_sparse``: per head, chunks of segments (one batched
gather of key / value blocks and two batched matmuls each), forward with the online-softmax merge
and backward by recomputation from the saved log-sum-exp.

Shape legend: Hkv kv heads, D head dim, Dv value dim, nS segments, C tiles per segment,
R = (H / Hkv) * block_q rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...scores import ScoreMod, apply_mods
from .plan import SlicePlan


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
                    out[bi, hi].index_copy_(0, ch.sq.to(out.device), torch.matmul(p, vg))
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
            flat_k = ch.sk.flatten().to(dv.device)  # the plan lives on the CPU
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
                dq[bi, hi].index_add_(0, ch.sq.to(dq.device), dq_g)
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
