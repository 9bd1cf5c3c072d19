"""Triton kernels: the backward of :mod:`.triton_attention`'s attention over a tile plan (dK / dV
per key block over the plan's transposed lists, dQ per query block, and the fused row term
``rowsum(dO * O) - dlse``), and its launcher :func:`bwd`.

Imported only when a Triton implementation runs, as :mod:`.triton_attention`. The same base-2
arithmetic and the same ``hashed`` pair rules as the forward; with LSH rows read through the sort
order (``INDEXED``) each round writes its gradients at the items' rows of a slice of its own.

Shape legend: B batch, H query heads, Hkv kv heads (``GROUP = H // Hkv``), T queries, S keys,
D head dim, Dv value dim, BM / BN query / key tile, R hash rounds, N sorted items.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_attention import _common, _hashed, _launch, _mode_args, _pow2, _prepared, _query_of, _rows_of, _warps

__all__ = ["bwd"]


@triton.jit
def _bwd_scores_t(k, q, qk_scale, lse2, offs_m, offs_n, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
                  T, S, BM: tl.constexpr, BN: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr,
                  CAUSAL: tl.constexpr, SHARED: tl.constexpr, SELF2: tl.constexpr, EVEN_S: tl.constexpr,
                  IEEE: tl.constexpr):
    """Probabilities ``p^T (BN, BM)`` of one tile (keys as rows), from the saved base-2 lse, and
    the self-pair flags (shared-QK: no gradient through the constant self score)."""
    if IEEE:
        qkt = tl.dot(k, tl.trans(q), input_precision="ieee")
    else:
        qkt = tl.dot(k, tl.trans(q))
    qkt = qkt * qk_scale
    if MASKED:
        if MODE == 0:
            sub = tl.load(SUB + lib * (BM * BN) + (offs_m % BM)[None, :] * BN + (offs_n % BN)[:, None])
            qkt = tl.where(sub != 0, qkt, float("-inf"))
        else:
            qkt = tl.trans(_hashed(tl.trans(qkt), IDS, ids_off, s_idr, offs_m, offs_n, n_other, n_chunks, causal_off,
                                   CAUSAL, SHARED, SELF2))
    if not EVEN_S:
        qkt = tl.where(offs_n[:, None] < S, qkt, float("-inf"))
    return tl.exp2(qkt - lse2[None, :])


@triton.jit
def _indexed_rows(Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dot, offs_m, offs_d, offs_dv, T, ROWS, rows_off,
                  IDS, ids_off, D_REAL: tl.constexpr, DV_REAL: tl.constexpr):
    """An LSH round's query rows for the backward: ``q`` of the item in each sorted slot, and
    ``dO``, lse and the row term at that item's query row (a slot that is no query gets lse
    +inf: no weight, no gradient)."""
    qrow = _rows_of(ROWS, rows_off, offs_m, T, True)
    dest = _query_of(IDS, ids_off, offs_m, T, True)
    isq = dest >= 0
    at = tl.where(isq, dest, 0)
    q = tl.load(Q + q_off + qrow[:, None] * s_qt + offs_d[None, :],
                mask=(offs_m[:, None] < T) & (offs_d[None, :] < D_REAL), other=0.0)
    do = tl.load(DO + do_off + at[:, None] * s_dot + offs_dv[None, :], mask=isq[:, None] & (offs_dv[None, :] < DV_REAL),
                 other=0.0)
    lse = tl.load(LSE + row_off + at, mask=isq, other=float("inf"))
    delta = tl.load(DELTA + row_off + at, mask=isq, other=0.0)
    return q, do, lse, delta


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dot, start_m, offs_n, offs_d, offs_dv,
               T, S, qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, ROWS, rows_off,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
               DV_REAL: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr,
               SHARED: tl.constexpr, SELF2: tl.constexpr, EVEN_S: tl.constexpr, EVEN_T: tl.constexpr,
               IEEE: tl.constexpr, INDEXED: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    if INDEXED:  # q by the slot's item; dO, lse and the row term by its query's row (none: no weight)
        q, do, lse, delta = _indexed_rows(Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dot, offs_m, offs_d,
                                          offs_dv, T, ROWS, rows_off, IDS, ids_off, D_REAL, DV_REAL)
    elif EVEN_T and D == D_REAL and DV == DV_REAL:
        q = tl.load(Q + q_off + offs_m[:, None] * s_qt + offs_d[None, :])
        do = tl.load(DO + do_off + offs_m[:, None] * s_dot + offs_dv[None, :])
        lse = tl.load(LSE + row_off + offs_m)
        delta = tl.load(DELTA + row_off + offs_m)
    else:
        rows = offs_m < T
        q = tl.load(Q + q_off + offs_m[:, None] * s_qt + offs_d[None, :],
                    mask=rows[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
        do = tl.load(DO + do_off + offs_m[:, None] * s_dot + offs_dv[None, :],
                     mask=rows[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
        lse = tl.load(LSE + row_off + offs_m, mask=rows, other=float("inf"))
        delta = tl.load(DELTA + row_off + offs_m, mask=rows, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    pt = _bwd_scores_t(k, q, qk_scale, lse2, offs_m, offs_n, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks,
                       causal_off, T, S, BM, BN, MASKED, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE)
    if IEEE:
        dv += tl.dot(pt.to(do.dtype), do, input_precision="ieee")
        dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
    else:
        dv += tl.dot(pt.to(do.dtype), do)
        dpt = tl.dot(v, tl.trans(do))
    dst = pt * (dpt - delta[None, :])
    if MODE == 1:
        if SHARED:
            dst = tl.where(offs_n[:, None] == offs_m[None, :], 0.0, dst)
    if IEEE:
        dk += tl.dot(dst.to(q.dtype), q, input_precision="ieee")
    else:
        dk += tl.dot(dst.to(q.dtype), q)
    return dk, dv


@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK_OUT, DV_OUT, F_NUM, F_IDX, P_NUM, P_IDX, P_LIB, SUB, IDS, ROWS,
                 s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
                 s_nb, s_nh, s_ib, s_ih, s_iq, s_idb, s_idh, s_idr, s_rwb, s_rwh,
                 H, HKV, GROUP, T, S, T_OUT, B_ITEMS, qk_scale, scale, n_other, n_chunks, causal_off,
                 BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
                 DV_REAL: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
                 SELF2: tl.constexpr, EVEN_S: tl.constexpr, EVEN_T: tl.constexpr, IEEE: tl.constexpr,
                 INDEXED: tl.constexpr):
    """dK and dV of one key block of one kv head, summed over the query heads of its group; the
    plan's transposed lists give the query blocks that attend it. ``INDEXED`` (LSH rounds, one
    head per group): the block's rows are read through the sort order and its gradients written
    at those rows of this round's slice of ``DK_OUT`` / ``DV_OUT``."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1).to(tl.int64)
    b, hk = bhk // HKV, bhk % HKV
    bi = b % B_ITEMS
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    cols = offs_n < S
    krow = _rows_of(ROWS, b * s_rwb + hk * s_rwh, offs_n, S, INDEXED)
    k = tl.load(K + bi * s_kb + hk * s_kh + krow[:, None] * s_kt + offs_d[None, :],
                mask=cols[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
    v = tl.load(V + bi * s_vb + hk * s_vh + krow[:, None] * s_vt + offs_dv[None, :],
                mask=cols[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
    dk = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_off = bi * s_qb + h * s_qh
        do_off = b * s_db + h * s_dh
        row_off = (b * H + h) * T_OUT
        ids_off = b * s_idb + h * s_idh
        rows_off = b * s_rwb + h * s_rwh
        num_off = b * s_nb + h * s_nh + pid_n
        idx_off = b * s_ib + h * s_ih + pid_n * s_iq
        n_full = tl.load(F_NUM + num_off)
        for it in range(n_full):
            start_m = tl.load(F_IDX + idx_off + it) * BM
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dt, start_m, offs_n,
                                offs_d, offs_dv, T, S, qk_scale, SUB, 0, IDS, ids_off, s_idr, n_other, n_chunks,
                                causal_off, ROWS, rows_off, BM, BN, D, DV, D_REAL, DV_REAL, False, MODE, CAUSAL, SHARED,
                                SELF2, EVEN_S, EVEN_T, IEEE, INDEXED)
        n_part = tl.load(P_NUM + num_off)
        for it in range(n_part):
            start_m = tl.load(P_IDX + idx_off + it) * BM
            lib = tl.load(P_LIB + idx_off + it)
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dt, start_m, offs_n,
                                offs_d, offs_dv, T, S, qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks,
                                causal_off, ROWS, rows_off, BM, BN, D, DV, D_REAL, DV_REAL, True, MODE, CAUSAL, SHARED,
                                SELF2, EVEN_S, EVEN_T, IEEE, INDEXED)
    out = cols[:, None]  # DK_OUT / DV_OUT have K's and V's strides (INDEXED: one slice per round)
    tl.store(DK_OUT + b * s_kb + hk * s_kh + krow[:, None] * s_kt + offs_d[None, :],
             (dk * scale).to(DK_OUT.dtype.element_ty),
             mask=out & (offs_d[None, :] < D_REAL))
    tl.store(DV_OUT + b * s_vb + hk * s_vh + krow[:, None] * s_vt + offs_dv[None, :], dv.to(DV_OUT.dtype.element_ty),
             mask=out & (offs_dv[None, :] < DV_REAL))


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_d, offs_dv, T, S, qk_scale,
             SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, ROWS, rows_off,
             BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
             DV_REAL: tl.constexpr, MASKED: tl.constexpr,
             MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr, SELF2: tl.constexpr,
             EVEN_S: tl.constexpr, IEEE: tl.constexpr, INDEXED: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    krow = _rows_of(ROWS, rows_off, offs_n, S, INDEXED)
    if EVEN_S and D == D_REAL and DV == DV_REAL:
        k = tl.load(K + k_off + krow[:, None] * s_kt + offs_d[None, :])
        v = tl.load(V + v_off + krow[:, None] * s_vt + offs_dv[None, :])
    else:
        cols = offs_n < S
        k = tl.load(K + k_off + krow[:, None] * s_kt + offs_d[None, :],
                    mask=cols[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
        v = tl.load(V + v_off + krow[:, None] * s_vt + offs_dv[None, :],
                    mask=cols[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
    pt = _bwd_scores_t(k, q, qk_scale, lse2, offs_m, offs_n, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks,
                       causal_off, T, S, BM, BN, MASKED, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE)
    p = tl.trans(pt)  # (BM, BN)
    if IEEE:
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    else:
        dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    if MODE == 1:
        if SHARED:
            ds = tl.where(offs_m[:, None] == offs_n[None, :], 0.0, ds)
    if IEEE:
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
    else:
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, F_NUM, F_IDX, P_NUM, P_IDX, P_LIB, SUB, IDS, ROWS,
               s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
               s_nb, s_nh, s_ib, s_ih, s_iq, s_idb, s_idh, s_idr, s_rwb, s_rwh,
               H, GROUP, T, S, T_OUT, B_ITEMS, qk_scale, scale, n_other, n_chunks, causal_off,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
               DV_REAL: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
               SELF2: tl.constexpr, EVEN_S: tl.constexpr, IEEE: tl.constexpr, INDEXED: tl.constexpr):
    """dQ of one query block of one head over the key blocks of the plan's lists (``INDEXED``:
    rows read and written through the sort order, as in the dK / dV kernel)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    bi = b % B_ITEMS
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    rows = offs_m < T
    ids_off = b * s_idb + h * s_idh
    rows_off = b * s_rwb + h * s_rwh
    qrow = _rows_of(ROWS, rows_off, offs_m, T, INDEXED)
    if INDEXED:
        q, do, lse, delta = _indexed_rows(Q, DO, LSE, DELTA, bi * s_qb + h * s_qh, b * s_db + h * s_dh, bh * T_OUT,
                                          s_qt, s_dt, offs_m, offs_d, offs_dv, T, ROWS, rows_off, IDS, ids_off, D_REAL,
                                          DV_REAL)
    else:
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
                    mask=rows[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
        do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_dv[None, :],
                     mask=rows[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=rows, other=float("inf"))
        delta = tl.load(DELTA + bh * T + offs_m, mask=rows, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    k_off = bi * s_kb + hk * s_kh
    v_off = bi * s_vb + hk * s_vh
    num_off = b * s_nb + h * s_nh + pid_m
    idx_off = b * s_ib + h * s_ih + pid_m * s_iq
    dq = tl.zeros([BM, D], tl.float32)
    n_full = tl.load(F_NUM + num_off)
    for it in range(n_full):
        start_n = tl.load(F_IDX + idx_off + it) * BN
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_d, offs_dv, T, S,
                      qk_scale, SUB, 0, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, ROWS, rows_off, BM, BN, D,
                      DV, D_REAL, DV_REAL, False, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE, INDEXED)
    n_part = tl.load(P_NUM + num_off)
    for it in range(n_part):
        start_n = tl.load(P_IDX + idx_off + it) * BN
        lib = tl.load(P_LIB + idx_off + it)
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_d, offs_dv, T, S,
                      qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, ROWS, rows_off, BM, BN,
                      D, DV, D_REAL, DV_REAL, True, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE, INDEXED)
    tl.store(DQ + b * s_qb + h * s_qh + qrow[:, None] * s_qt + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=rows[:, None] & (offs_d[None, :] < D_REAL))


@triton.jit
def _delta_kernel(OUT, DO, DLSE, DELTA, s_ob, s_oh, s_ot, s_db, s_dh, s_dt, H, T,
                  BM: tl.constexpr, DV: tl.constexpr, DV_REAL: tl.constexpr, HAS_DLSE: tl.constexpr):
    """The backward's row term ``rowsum(dO * O) - dlse`` (float32), one block of rows."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    rows = pid * BM + tl.arange(0, BM)
    cols = tl.arange(0, DV)
    ok = (rows[:, None] < T) & (cols[None, :] < DV_REAL)
    o = tl.load(OUT + b * s_ob + h * s_oh + rows[:, None] * s_ot + cols[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + rows[:, None] * s_dt + cols[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + bh * T + rows, mask=rows < T, other=0.0)
    tl.store(DELTA + bh * T + rows, delta, mask=rows < T)


def bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, dlse: Tensor | None, plans,
        scale: float, hashed=None, launch: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` over both lists of ``plan`` (its tiles ``plan.bm x plan.bn``); ``dlse`` is
    the gradient of the returned log-sum-exp, or None. With ``hashed.rows`` each round writes its
    gradients at the items' rows of a slice of its own, and the slices are summed (float32)."""
    lay, q, k, v, s = _prepared(q, k, v, hashed)
    b, h, _, d = q.shape
    hkv = k.shape[1]
    t_out = out.shape[2]
    dout = dout.contiguous()
    delta = torch.empty(lay.b_out, h, t_out, device=q.device, dtype=torch.float32)  # rowsum(dO * O) - dlse
    dvp = _pow2(v.shape[-1])
    _delta_kernel[(triton.cdiv(t_out, 64), lay.b_out * h)](
        out, dout, delta if dlse is None else dlse.float().contiguous(), delta, out.stride(0), out.stride(1),
        out.stride(2), dout.stride(0), dout.stride(1), dout.stride(2), h, t_out, BM=64, DV=dvp, DV_REAL=v.shape[-1],
        HAS_DLSE=dlse is not None)
    if lay.indexed:  # one slice per round, laid out as the items (which must be dense for that)
        dq, dk, dv = (torch.empty((lay.b_out,) + x.shape[1:], device=x.device, dtype=x.dtype) for x in (q, k, v))
    else:
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    (ids, *ids_args), flags = _mode_args(hashed, q.device)
    consts, qk_scale = _common(q, k, v, scale)
    lse = lse.contiguous()
    plan, dq_plan = plans  # dK/dV: key blocks of plan.bn, query steps of plan.bm; dQ: dq_plan's tiles
    warps = _warps(d, 64, *_launch(launch, "bwd_"))
    sizes = (lay.t_slots, s, lay.t_out, lay.b_items)
    f_num, f_idx, p_num, p_idx, p_lib = plan.q_lists
    _dkdv_kernel[(triton.cdiv(s, plan.bn), lay.b_out * hkv)](
        q, k, v, dout, lse, delta, dk, dv, f_num, f_idx, p_num, p_idx, p_lib, plan.sub, ids, lay.rows,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        *plan.strides(f_num, f_idx), ids_args[0], ids_args[1], ids_args[2], lay.s_rwb, lay.s_rwh,
        h, hkv, h // hkv, *sizes, qk_scale, scale, *ids_args[3:],
        BM=plan.bm, BN=plan.bn, EVEN_S=s % plan.bn == 0, EVEN_T=lay.t_slots % plan.bm == 0, INDEXED=lay.indexed,
        **consts, **flags, **warps)
    f_num, f_idx, p_num, p_idx, p_lib = dq_plan.kv_lists
    _dq_kernel[(triton.cdiv(lay.t_slots, dq_plan.bm), lay.b_out * h)](
        q, k, v, dout, lse, delta, dq, f_num, f_idx, p_num, p_idx, p_lib, dq_plan.sub, ids, lay.rows,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        *plan.strides(f_num, f_idx), ids_args[0], ids_args[1], ids_args[2], lay.s_rwb, lay.s_rwh,
        h, h // hkv, *sizes, qk_scale, scale, *ids_args[3:],
        BM=dq_plan.bm, BN=dq_plan.bn, EVEN_S=s % dq_plan.bn == 0, INDEXED=lay.indexed, **consts, **flags, **warps)
    if lay.indexed:
        dq, dk, dv = (_sum_rounds(x, lay.b_items) for x in (dq, dk, dv))
    return dq, dk, dv


def _sum_rounds(per_round: Tensor, b: int) -> Tensor:
    """``(R*B, H, N+1, E)`` gradients of each round's slots at the items' rows -> their sum over
    rounds ``(B, H, N+1, E)`` (float32 sum). The last row, the padding item that several slots
    share, is not a real row: it gets zero."""
    per_round[:, :, -1] = 0
    summed = per_round.view(-1, b, *per_round.shape[1:]).sum(0, dtype=torch.float32)
    return summed.to(per_round.dtype)
