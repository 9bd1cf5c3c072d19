"""Triton kernels: FlashAttention-2 style attention over a tile plan, forward and backward, the
attention weights by recomputation, and a split-key decode kernel for one query token.

Imported only when a Triton implementation runs (``TRITON_INTERPRET=1`` must be set before this
import to run the kernels on CPU tensors, as the tests do). The launchers take a
:class:`~attnkit.kernels.triton_plan.TritonPlan`; the differentiable entry point is
:func:`attnkit.kernels.triton_plan.plan_attention`.

Every kernel works in base 2: scores are multiplied by ``scale * log2(e)`` and exponentiated
with ``exp2``; the saved log-sum-exp is converted back to natural log. Products take the inputs'
dtype (float16 / bfloat16; float32 in IEEE precision, never TF32) and accumulate in float32.

Tile loops: for each query block, first the full key blocks (no mask work), then the partial
ones. A partial tile is masked by its stored sub-mask (``MODE == 0``) or, for LSH rounds, by the
``hashed`` pair rules computed from per-item ids (``MODE == 1``): query / key positions, the
causal limit, the self score of shared-QK mode and the count of rounds that attend each pair.

Shape legend: B batch, H query heads, Hkv kv heads (``GROUP = H // Hkv``), T queries, S keys,
D head dim, Dv value dim, BM / BN query / key tile.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_plan import interpreting

__all__ = ["fwd", "bwd", "weights", "decode", "hash_buckets", "LOG2E"]

LOG2E = 1.4426950408889634
SELF_SCORE = -1e5  # shared-QK: the score of an item with itself (as lsh's SELF_SCORE)


def _interpreter_fixes() -> None:
    """Two fixes of Triton's interpreter (CPU only; compiled kernels are untouched): a loaded
    scalar used as a loop bound goes through ``int(array)``, which NumPy 2.4 refuses for a
    1-element array (read its one element instead); and ``tl.dot`` of bfloat16 operands
    multiplies their raw 16-bit patterns (convert them to float32 first)."""
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "reads_one_element", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched.reads_one_element = True
    interpreter._patch_lang_tensor = patched

    dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(x):
            if x.dtype.scalar == tl.bfloat16:
                data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
                return interpreter.TensorHandle(data, tl.float32)
            return x
        return dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot


if interpreting():
    _interpreter_fixes()


@triton.jit
def _hashed(qk, IDS, ids_off, s_idr, offs_m, offs_n, n_other, n_chunks, causal_off,
            CAUSAL: tl.constexpr, SHARED: tl.constexpr, SELF2: tl.constexpr):
    """The ``hashed`` pair rules on a (BM, BN) tile of base-2 scores of sorted items."""
    qpos = tl.load(IDS + ids_off + offs_m)
    kpos = tl.load(IDS + ids_off + s_idr + offs_n)
    if SHARED:
        qk = tl.where(offs_m[:, None] == offs_n[None, :], SELF2, qk)
    count = tl.full(qk.shape, 1.0, tl.float32)
    for r in range(n_other):
        mine = tl.load(IDS + ids_off + (2 + r) * s_idr + offs_m)[:, None]
        ck = tl.load(IDS + ids_off + (2 + r) * s_idr + offs_n)[None, :]
        wrap = tl.where(mine == 0, n_chunks - 1, mine - 1)
        hit = (ck == mine) | (ck == mine - 1) | (ck == wrap)
        count += hit.to(tl.float32)
    qk = qk - tl.log2(count)
    ok = (qpos[:, None] >= 0) & (kpos[None, :] >= 0)
    if CAUSAL:
        ok = ok & (kpos[None, :] <= qpos[:, None] + causal_off)
    return tl.where(ok, qk, float("-inf"))


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_n, offs_d, offs_dv, S,
              qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
              BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
              DV_REAL: tl.constexpr,
              MASKED: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
              SELF2: tl.constexpr, EVEN_S: tl.constexpr, IEEE: tl.constexpr):
    """One key tile of the online softmax: returns the updated ``(acc, l_i, m_i)``."""
    cols = start_n + offs_n
    if EVEN_S and D == D_REAL and DV == DV_REAL:  # no bounds to check: plain (vectorised) loads
        kt = tl.load(K + k_off + cols[None, :] * s_kt + offs_d[:, None])  # (D, BN)
    else:
        kt = tl.load(K + k_off + cols[None, :] * s_kt + offs_d[:, None],
                     mask=(cols[None, :] < S) & (offs_d[:, None] < D_REAL), other=0.0)
    if IEEE:
        qk = tl.dot(q, kt, input_precision="ieee")
    else:
        qk = tl.dot(q, kt)
    qk = qk * qk_scale
    if MASKED:
        if MODE == 0:
            sub = tl.load(SUB + lib * (BM * BN) + (offs_m % BM)[:, None] * BN + offs_n[None, :])
            qk = tl.where(sub != 0, qk, float("-inf"))
        else:
            qk = _hashed(qk, IDS, ids_off, s_idr, offs_m, cols, n_other, n_chunks, causal_off, CAUSAL, SHARED, SELF2)
    if not EVEN_S:
        qk = tl.where(cols[None, :] < S, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(qk - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if EVEN_S and D == D_REAL and DV == DV_REAL:
        v = tl.load(V + v_off + cols[:, None] * s_vt + offs_dv[None, :])  # (BN, DV)
    else:
        v = tl.load(V + v_off + cols[:, None] * s_vt + offs_dv[None, :],
                    mask=(cols[:, None] < S) & (offs_dv[None, :] < DV_REAL), other=0.0)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, F_NUM, F_IDX, P_NUM, P_IDX, P_LIB, SUB, IDS,
                s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                s_nb, s_nh, s_ib, s_ih, s_iq, s_idb, s_idh, s_idr,
                H, GROUP, T, S, qk_scale, n_other, n_chunks, causal_off,
                BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
                DV_REAL: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
                SELF2: tl.constexpr, EVEN_S: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
                mask=(offs_m[:, None] < T) & (offs_d[None, :] < D_REAL), other=0.0)
    k_off = b * s_kb + hk * s_kh
    v_off = b * s_vb + hk * s_vh
    ids_off = b * s_idb + h * s_idh
    num_off = b * s_nb + h * s_nh + pid_m
    idx_off = b * s_ib + h * s_ih + pid_m * s_iq
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DV], tl.float32)
    n_full = tl.load(F_NUM + num_off)
    for it in range(n_full):
        start_n = tl.load(F_IDX + idx_off + it) * BN
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_n, offs_d,
                                  offs_dv, S, qk_scale, SUB, 0, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
                                  BM, BN, D, DV, D_REAL, DV_REAL, False, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE)
    n_part = tl.load(P_NUM + num_off)
    for it in range(n_part):
        start_n = tl.load(P_IDX + idx_off + it) * BN
        lib = tl.load(P_LIB + idx_off + it)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_n, offs_d,
                                  offs_dv, S, qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
                                  BM, BN, D, DV, D_REAL, DV_REAL, True, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE)
    dead = l_i == 0.0
    l_safe = tl.where(dead, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(dead, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    rows = offs_m < T
    tl.store(OUT + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_dv[None, :], out.to(OUT.dtype.element_ty),
             mask=rows[:, None] & (offs_dv[None, :] < DV_REAL))
    tl.store(LSE + bh * T + offs_m, lse, mask=rows)


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
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dot, start_m, offs_n, offs_d, offs_dv,
               T, S, qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
               DV_REAL: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr,
               SHARED: tl.constexpr, SELF2: tl.constexpr, EVEN_S: tl.constexpr, EVEN_T: tl.constexpr,
               IEEE: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    if EVEN_T and D == D_REAL and DV == DV_REAL:
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
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK_OUT, DV_OUT, F_NUM, F_IDX, P_NUM, P_IDX, P_LIB, SUB, IDS,
                 s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
                 s_nb, s_nh, s_ib, s_ih, s_iq, s_idb, s_idh, s_idr,
                 H, HKV, GROUP, T, S, qk_scale, scale, n_other, n_chunks, causal_off,
                 BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
                 DV_REAL: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
                 SELF2: tl.constexpr, EVEN_S: tl.constexpr, EVEN_T: tl.constexpr, IEEE: tl.constexpr):
    """dK and dV of one key block of one kv head, summed over the query heads of its group; the
    plan's transposed lists give the query blocks that attend it."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1).to(tl.int64)
    b, hk = bhk // HKV, bhk % HKV
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    cols = offs_n < S
    k = tl.load(K + b * s_kb + hk * s_kh + offs_n[:, None] * s_kt + offs_d[None, :],
                mask=cols[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
    v = tl.load(V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vt + offs_dv[None, :],
                mask=cols[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
    dk = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_off = b * s_qb + h * s_qh
        do_off = b * s_db + h * s_dh
        row_off = (b * H + h) * T
        ids_off = b * s_idb + h * s_idh
        num_off = b * s_nb + h * s_nh + pid_n
        idx_off = b * s_ib + h * s_ih + pid_n * s_iq
        n_full = tl.load(F_NUM + num_off)
        for it in range(n_full):
            start_m = tl.load(F_IDX + idx_off + it) * BM
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dt, start_m, offs_n,
                                offs_d, offs_dv, T, S, qk_scale, SUB, 0, IDS, ids_off, s_idr, n_other, n_chunks,
                                causal_off, BM, BN, D, DV, D_REAL, DV_REAL, False, MODE, CAUSAL, SHARED, SELF2, EVEN_S,
                                EVEN_T, IEEE)
        n_part = tl.load(P_NUM + num_off)
        for it in range(n_part):
            start_m = tl.load(P_IDX + idx_off + it) * BM
            lib = tl.load(P_LIB + idx_off + it)
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, row_off, s_qt, s_dt, start_m, offs_n,
                                offs_d, offs_dv, T, S, qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks,
                                causal_off, BM, BN, D, DV, D_REAL, DV_REAL, True, MODE, CAUSAL, SHARED, SELF2, EVEN_S,
                                EVEN_T, IEEE)
    out = cols[:, None]
    tl.store(DK_OUT + b * s_kb + hk * s_kh + offs_n[:, None] * s_kt + offs_d[None, :],
             (dk * scale).to(DK_OUT.dtype.element_ty),
             mask=out & (offs_d[None, :] < D_REAL))
    tl.store(DV_OUT + b * s_vb + hk * s_vh + offs_n[:, None] * s_vt + offs_dv[None, :], dv.to(DV_OUT.dtype.element_ty),
             mask=out & (offs_dv[None, :] < DV_REAL))


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_d, offs_dv, T, S, qk_scale,
             SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
             BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
             DV_REAL: tl.constexpr, MASKED: tl.constexpr,
             MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr, SELF2: tl.constexpr,
             EVEN_S: tl.constexpr, IEEE: tl.constexpr):
    offs_n = start_n + tl.arange(0, BN)
    if EVEN_S and D == D_REAL and DV == DV_REAL:
        k = tl.load(K + k_off + offs_n[:, None] * s_kt + offs_d[None, :])
        v = tl.load(V + v_off + offs_n[:, None] * s_vt + offs_dv[None, :])
    else:
        cols = offs_n < S
        k = tl.load(K + k_off + offs_n[:, None] * s_kt + offs_d[None, :],
                    mask=cols[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
        v = tl.load(V + v_off + offs_n[:, None] * s_vt + offs_dv[None, :],
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
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, F_NUM, F_IDX, P_NUM, P_IDX, P_LIB, SUB, IDS,
               s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_db, s_dh, s_dt,
               s_nb, s_nh, s_ib, s_ih, s_iq, s_idb, s_idh, s_idr,
               H, GROUP, T, S, qk_scale, scale, n_other, n_chunks, causal_off,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
               DV_REAL: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
               SELF2: tl.constexpr, EVEN_S: tl.constexpr, IEEE: tl.constexpr):
    """dQ of one query block of one head over the key blocks of the plan's lists."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    rows = offs_m < T
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
                mask=rows[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_dv[None, :],
                 mask=rows[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
    lse = tl.load(LSE + bh * T + offs_m, mask=rows, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + bh * T + offs_m, mask=rows, other=0.0)
    k_off = b * s_kb + hk * s_kh
    v_off = b * s_vb + hk * s_vh
    ids_off = b * s_idb + h * s_idh
    num_off = b * s_nb + h * s_nh + pid_m
    idx_off = b * s_ib + h * s_ih + pid_m * s_iq
    dq = tl.zeros([BM, D], tl.float32)
    n_full = tl.load(F_NUM + num_off)
    for it in range(n_full):
        start_n = tl.load(F_IDX + idx_off + it) * BN
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_d, offs_dv, T, S,
                      qk_scale, SUB, 0, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, BM, BN, D, DV, D_REAL,
                      DV_REAL, False, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE)
    n_part = tl.load(P_NUM + num_off)
    for it in range(n_part):
        start_n = tl.load(P_IDX + idx_off + it) * BN
        lib = tl.load(P_LIB + idx_off + it)
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_d, offs_dv, T, S,
                      qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, BM, BN, D, DV, D_REAL,
                      DV_REAL, True, MODE, CAUSAL, SHARED, SELF2, EVEN_S, IEEE)
    tl.store(DQ + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=rows[:, None] & (offs_d[None, :] < D_REAL))


@triton.jit
def _weights_kernel(Q, K, LSE, W, KINDS, LIB, SUB, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_wb, s_wh, s_wt,
                    s_tb, s_th, s_tq, H, GROUP, T, S, qk_scale,
                    BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, D_REAL: tl.constexpr, IEEE: tl.constexpr):
    """One (BM, BN) tile of the weights ``exp(s - lse)``: zeros for an empty tile, the sub-mask
    applied on a partial one."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    rows, cols = offs_m < T, offs_n < S
    t_off = b * s_tb + h * s_th + pid_m * s_tq + pid_n
    kind = tl.load(KINDS + t_off)
    w = tl.zeros([BM, BN], tl.float32)
    if kind != 0:
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
                    mask=rows[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
        kt = tl.load(K + b * s_kb + (h // GROUP) * s_kh + offs_n[None, :] * s_kt + offs_d[:, None],
                     mask=cols[None, :] & (offs_d[:, None] < D_REAL), other=0.0)
        if IEEE:
            qk = tl.dot(q, kt, input_precision="ieee")
        else:
            qk = tl.dot(q, kt)
        qk = qk * qk_scale
        if kind == 1:
            lib = tl.load(LIB + t_off)
            sub = tl.load(SUB + lib * (BM * BN) + tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :])
            qk = tl.where(sub != 0, qk, float("-inf"))
        lse = tl.load(LSE + bh * T + offs_m, mask=rows, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
        w = tl.exp2(qk - lse2[:, None])
        w = tl.where(cols[None, :], w, 0.0)
    tl.store(W + b * s_wb + h * s_wh + offs_m[:, None] * s_wt + offs_n[None, :], w.to(W.dtype.element_ty),
             mask=rows[:, None] & cols[None, :])


@triton.jit
def _decode_kernel(Q, K, V, KEEP, W, ACC, ML, s_qb, s_qh, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt,
                   s_eb, s_eh, s_wb, s_wh, HKV, GROUP, S, qk_scale, chunk, n_splits,
                   GM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
                   DV_REAL: tl.constexpr, HAS_KEEP: tl.constexpr, WEIGHTS: tl.constexpr, IEEE: tl.constexpr):
    """One query token, the ``GROUP`` query heads of one kv head as rows, over one split of the
    keys: partial ``(acc, m, l)`` per split; with ``WEIGHTS`` the base-2 scores go to ``W``."""
    split = tl.program_id(0)
    bhk = tl.program_id(1).to(tl.int64)
    b, hk = bhk // HKV, bhk % HKV
    offs_g = tl.arange(0, GM)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    heads = hk * GROUP + offs_g
    live = offs_g < GROUP
    q = tl.load(Q + b * s_qb + heads[:, None] * s_qh + offs_d[None, :],
                mask=live[:, None] & (offs_d[None, :] < D_REAL), other=0.0)
    m_i = tl.full([GM], float("-inf"), tl.float32)
    l_i = tl.zeros([GM], tl.float32)
    acc = tl.zeros([GM, DV], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, S)
    for start in range(lo, hi, BN):
        cols = start + tl.arange(0, BN)
        inside = cols < hi
        kt = tl.load(K + b * s_kb + hk * s_kh + cols[None, :] * s_kt + offs_d[:, None],
                     mask=inside[None, :] & (offs_d[:, None] < D_REAL), other=0.0)
        if IEEE:
            qk = tl.dot(q, kt, input_precision="ieee")
        else:
            qk = tl.dot(q, kt)
        qk = qk * qk_scale
        ok = inside[None, :] & live[:, None]
        if HAS_KEEP:
            keep = tl.load(KEEP + b * s_eb + heads[:, None] * s_eh + cols[None, :], mask=ok, other=0)
            ok = ok & (keep != 0)
        qk = tl.where(ok, qk, float("-inf"))
        if WEIGHTS:
            tl.store(W + b * s_wb + heads[:, None] * s_wh + cols[None, :], qk, mask=inside[None, :] & live[:, None])
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * s_vb + hk * s_vh + cols[:, None] * s_vt + offs_dv[None, :],
                    mask=inside[:, None] & (offs_dv[None, :] < DV_REAL), other=0.0)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    base = bhk * n_splits + split
    tl.store(ACC + base * GM * DV + offs_g[:, None] * DV + offs_dv[None, :], acc)
    tl.store(ML + base * 2 * GM + offs_g, m_i)
    tl.store(ML + base * 2 * GM + GM + offs_g, l_i)


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


@triton.jit
def _hash_kernel(X, ROT, OUT, n_rows, n_half, s_x, s_rd, s_rr, n_rounds,
                 BM: tl.constexpr, BC: tl.constexpr, D: tl.constexpr, D_REAL: tl.constexpr, IEEE: tl.constexpr):
    """Angular LSH buckets of a block of rows for one round: ``argmax([xR, -xR])`` over the
    round's ``n_half`` rotations, taken tile by tile (the projections never reach memory)."""
    pid = tl.program_id(0)
    r = tl.program_id(1)
    rows = (pid * BM + tl.arange(0, BM)).to(tl.int64)
    offs_d = tl.arange(0, D)
    x = tl.load(X + rows[:, None] * s_x + offs_d[None, :], mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D_REAL),
                other=0.0)
    top = tl.full([BM], float("-inf"), tl.float32)
    arg_top = tl.zeros([BM], tl.int32)
    low = tl.full([BM], float("inf"), tl.float32)
    arg_low = tl.zeros([BM], tl.int32)
    for c0 in range(0, n_half, BC):
        cols = c0 + tl.arange(0, BC)
        rot = tl.load(ROT + offs_d[:, None] * s_rd + r * s_rr + cols[None, :],
                      mask=(offs_d[:, None] < D_REAL) & (cols[None, :] < n_half), other=0.0)
        if IEEE:
            proj = tl.dot(x, rot, input_precision="ieee")
        else:  # the rotations are bf16 values (random_rotations): exact in x's half dtype only if bf16
            proj = tl.dot(x, rot.to(x.dtype))
        inside = cols[None, :] < n_half
        hi_v = tl.max(tl.where(inside, proj, float("-inf")), 1)
        hi_i = tl.argmax(tl.where(inside, proj, float("-inf")), 1).to(tl.int32) + c0
        lo_v = tl.min(tl.where(inside, proj, float("inf")), 1)
        lo_i = tl.argmin(tl.where(inside, proj, float("inf")), 1).to(tl.int32) + c0
        better_hi = hi_v > top  # strict: the first maximum wins, as torch.max
        top = tl.where(better_hi, hi_v, top)
        arg_top = tl.where(better_hi, hi_i, arg_top)
        better_lo = lo_v < low
        low = tl.where(better_lo, lo_v, low)
        arg_low = tl.where(better_lo, lo_i, arg_low)
    bucket = tl.where(top >= -low, arg_top, arg_low + n_half)
    tl.store(OUT + rows * n_rounds + r, bucket.to(tl.int64), mask=rows < n_rows)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


@functools.lru_cache(maxsize=8)
def _dummy(device: torch.device) -> Tensor:
    """A one-element int32 tensor standing for the ids a kernel does not read."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _mode_args(hashed, device: torch.device) -> tuple:
    """``(IDS, s_idb, s_idh, s_idr, n_other, n_chunks, causal_off)`` and the hashed constexprs."""
    if hashed is None:
        return (_dummy(device), 0, 0, 0, 0, 1, 0), dict(MODE=0, CAUSAL=False, SHARED=False)
    ids = hashed.ids
    return ((ids, ids.stride(0), ids.stride(1), ids.stride(2), ids.shape[2] - 2, hashed.n_chunks,
             0 if hashed.causal_offset is None else hashed.causal_offset),
            dict(MODE=1, CAUSAL=hashed.causal_offset is not None, SHARED=hashed.shared))


def _common(q: Tensor, k: Tensor, v: Tensor, scale: float) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    return dict(D=_pow2(d), DV=_pow2(dv), D_REAL=d, DV_REAL=dv, IEEE=q.dtype == torch.float32,
                SELF2=SELF_SCORE * LOG2E), scale * LOG2E


def _warps(d: int, bm: int, warps: int | None = None, stages: int | None = None) -> dict:
    """Launch settings of the backward, weights and decode kernels: the given ones, else a default
    by head dim and tile (none when interpreted)."""
    if interpreting():
        return {}
    return dict(num_warps=warps or (8 if d > 64 and bm >= 128 else 4), num_stages=stages or (3 if d <= 64 else 2))


def _fwd_warps(warps: int | None = None, stages: int | None = None) -> dict:
    """Launch settings of the forward kernel: the given ones, else 4 warps and 3 stages (the
    fastest of six settings on an H100 at T = 16k, D = 128, causal and window masks:
    benchmarks/results/gpu_tune_h100.json)."""
    if interpreting():
        return {}
    return dict(num_warps=warps or 4, num_stages=stages or 3)


def fwd(q: Tensor, k: Tensor, v: Tensor, plan, scale: float, hashed=None, launch: dict | None = None,
        ) -> tuple[Tensor, Tensor]:
    """Output ``(B, H, T, Dv)`` in q's dtype and lse ``(B, H, T)`` float32 over the forward lists
    of ``plan`` (tiles ``plan.bm x plan.bn``)."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    out = torch.empty(b, h, t, v.shape[-1], device=q.device, dtype=q.dtype)
    lse = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
    (ids, *ids_args), flags = _mode_args(hashed, q.device)
    consts, qk_scale = _common(q, k, v, scale)
    f_num, f_idx, p_num, p_idx, p_lib = plan.kv_lists
    sub = plan.sub
    grid = (triton.cdiv(t, plan.bm), b * h)
    _fwd_kernel[grid](q, k, v, out, lse, f_num, f_idx, p_num, p_idx, p_lib, sub, ids,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                      *plan.strides(f_num, f_idx), ids_args[0], ids_args[1], ids_args[2],
                      h, h // hkv, t, s, qk_scale, *ids_args[3:],
                      BM=plan.bm, BN=plan.bn, EVEN_S=s % plan.bn == 0, **consts, **flags,
                      **_fwd_warps(*_launch(launch, "")))
    return out, lse


def _launch(launch: dict | None, prefix: str) -> tuple[int | None, int | None]:
    launch = launch or {}
    return launch.get(prefix + "num_warps"), launch.get(prefix + "num_stages")


def bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, dlse: Tensor | None, plans,
        scale: float, hashed=None, launch: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` over both lists of ``plan`` (its tiles ``plan.bm x plan.bn``); ``dlse`` is
    the gradient of the returned log-sum-exp, or None."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    dout = dout.contiguous()
    delta = torch.empty(b, h, t, device=q.device, dtype=torch.float32)  # rowsum(dO * O) - dlse
    dvp = _pow2(v.shape[-1])
    _delta_kernel[(triton.cdiv(t, 64), b * h)](
        out, dout, delta if dlse is None else dlse.float().contiguous(), delta, out.stride(0), out.stride(1),
        out.stride(2), dout.stride(0), dout.stride(1), dout.stride(2), h, t, BM=64, DV=dvp, DV_REAL=v.shape[-1],
        HAS_DLSE=dlse is not None)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    (ids, *ids_args), flags = _mode_args(hashed, q.device)
    consts, qk_scale = _common(q, k, v, scale)
    lse = lse.contiguous()
    plan, dq_plan = plans  # dK/dV: key blocks of plan.bn, query steps of plan.bm; dQ: dq_plan's tiles
    warps = _warps(d, 64, *_launch(launch, "bwd_"))
    f_num, f_idx, p_num, p_idx, p_lib = plan.q_lists
    _dkdv_kernel[(triton.cdiv(s, plan.bn), b * hkv)](
        q, k, v, dout, lse, delta, dk, dv, f_num, f_idx, p_num, p_idx, p_lib, plan.sub, ids,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        *plan.strides(f_num, f_idx), ids_args[0], ids_args[1], ids_args[2],
        h, hkv, h // hkv, t, s, qk_scale, scale, *ids_args[3:],
        BM=plan.bm, BN=plan.bn, EVEN_S=s % plan.bn == 0, EVEN_T=t % plan.bm == 0, **consts, **flags, **warps)
    f_num, f_idx, p_num, p_idx, p_lib = dq_plan.kv_lists
    _dq_kernel[(triton.cdiv(t, dq_plan.bm), b * h)](
        q, k, v, dout, lse, delta, dq, f_num, f_idx, p_num, p_idx, p_lib, dq_plan.sub, ids,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        *plan.strides(f_num, f_idx), ids_args[0], ids_args[1], ids_args[2],
        h, h // hkv, t, s, qk_scale, scale, *ids_args[3:],
        BM=dq_plan.bm, BN=dq_plan.bn, EVEN_S=s % dq_plan.bn == 0, **consts, **flags, **warps)
    return dq, dk, dv


def weights(q: Tensor, k: Tensor, lse: Tensor, plan, scale: float, dtype: torch.dtype) -> Tensor:
    """The attention weights ``(B, H, T, S)`` in ``dtype``, recomputed tile by tile from ``lse``."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    w = torch.empty(b, h, t, s, device=q.device, dtype=dtype)
    kinds, lib = plan.kinds, plan.lib
    consts, qk_scale = _common(q, k, k, scale)
    sb, sh = plan.strides(kinds, kinds)[:2]
    _weights_kernel[(triton.cdiv(t, plan.bm), triton.cdiv(s, plan.bn), b * h)](
        q, k, lse.contiguous(), w, kinds, lib, plan.sub, q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2), w.stride(0), w.stride(1), w.stride(2), sb, sh, kinds.stride(2),
        h, h // hkv, t, s, qk_scale, BM=plan.bm, BN=plan.bn, D=consts["D"], D_REAL=consts["D_REAL"],
        IEEE=consts["IEEE"], **_warps(d, plan.bm))
    return w


def decode(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, scale: float, return_weights: bool,
           weights_dtype: torch.dtype, block: int = 64,
           splits: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One query token ``q (B, H, 1, D)`` over ``k``, ``v (B, Hkv, S, D)``, the keys split across
    programs and merged by their log-sum-exp. ``keep (Bm, Hm, S)`` bool/uint8 or None. Returns
    ``out (B, H, 1, Dv)``, ``lse (B, H, 1)`` and the weights ``(B, H, 1, S)`` when asked."""
    b, h, _, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    dv = v.shape[-1]
    group = h // hkv
    gm = _pow2(group)
    if splits is None:
        target = 4 * (torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4)
        splits = max(1, min(math.ceil(target / (b * hkv)), math.ceil(s / (4 * block))))
    chunk = math.ceil(math.ceil(s / splits) / block) * block
    splits = math.ceil(s / chunk)
    consts, qk_scale = _common(q, k, v, scale)
    acc = torch.empty(b * hkv, splits, gm, consts["DV"], device=q.device, dtype=torch.float32)
    ml = torch.empty(b * hkv, splits, 2, gm, device=q.device, dtype=torch.float32)
    w = torch.empty(b, h, 1, s, device=q.device, dtype=torch.float32) if return_weights else acc
    if keep is not None:
        keep = keep.to(torch.uint8)
        keep_args = (keep, keep.stride(0) if keep.shape[0] > 1 else 0, keep.stride(1) if keep.shape[1] > 1 else 0)
    else:
        keep_args = (acc, 0, 0)
    _decode_kernel[(splits, b * hkv)](
        q, k, v, keep_args[0], w, acc, ml, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), keep_args[1], keep_args[2],
        w.stride(0) if return_weights else 0, w.stride(1) if return_weights else 0,
        hkv, group, s, qk_scale, chunk, splits, GM=gm, BN=block, D=consts["D"], DV=consts["DV"],
        D_REAL=d, DV_REAL=dv, HAS_KEEP=keep is not None, WEIGHTS=return_weights, IEEE=consts["IEEE"],
        **_warps(d, 16))
    m, sums = ml[:, :, 0, :group], ml[:, :, 1, :group]  # (B*Hkv, splits, G)
    top = m.max(1, keepdim=True).values
    top_use = torch.where(top == float("-inf"), torch.zeros_like(top), top)
    f = torch.exp2(m - top_use)  # (B*Hkv, splits, G)
    total = (sums * f).sum(1)  # (B*Hkv, G)
    num = (acc[:, :, :group, :dv] * f.unsqueeze(-1)).sum(1)  # (B*Hkv, G, Dv)
    dead = total == 0
    out = num / torch.where(dead, torch.ones_like(total), total).unsqueeze(-1)
    lse2 = torch.where(dead, torch.full_like(total, float("-inf")), top_use.squeeze(1) + torch.log2(total))
    out = out.view(b, h, 1, dv).to(q.dtype)
    lse = (lse2 / LOG2E).view(b, h, 1)
    wts = None
    if return_weights:
        l2 = torch.where(dead, torch.full_like(lse2, float("inf")), lse2).view(b, h, 1, 1)
        wts = torch.exp2(w - l2).to(weights_dtype)
    return out, lse, wts


def hash_buckets(x: Tensor, rotations: Tensor) -> Tensor:
    """Angular LSH buckets of ``x (N, D)`` for every round of ``rotations (D, R, half)``:
    ``argmax([x R_r, -x R_r])`` -> ``(N, R)`` int64, the projections computed tile by tile
    (bfloat16 inputs on the matrix units, exact for the bf16-valued rotations of
    :func:`attnkit.impls.lsh.random_rotations`; other dtypes in float32) and reduced in registers."""
    n, d = x.shape
    n_rounds, half = rotations.shape[1], rotations.shape[2]
    if x.dtype != torch.bfloat16:  # float16 cannot hold the bf16 rotations exactly: project in float32
        x = x.float()
    x = x if x.stride(-1) == 1 else x.contiguous()
    rot = rotations.to(device=x.device, dtype=torch.float32).contiguous()
    out = torch.empty(n, n_rounds, dtype=torch.int64, device=x.device)
    bc = 64 if half >= 64 else max(16, _pow2(half))
    _hash_kernel[(triton.cdiv(n, 128), n_rounds)](x, rot, out, n, half, x.stride(0), rot.stride(0), rot.stride(1),
                                                  n_rounds, BM=128, BC=bc, D=_pow2(d), D_REAL=d,
                                                  IEEE=x.dtype == torch.float32,
                                                  **({} if interpreting() else {"num_warps": 4, "num_stages": 3}))
    return out
