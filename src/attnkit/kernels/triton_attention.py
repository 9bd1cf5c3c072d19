"""Triton kernels: FlashAttention-2 style attention over a tile plan, the forward and its
launcher, and the pieces the other Triton kernels share (the pair rules of LSH rounds, row
lookups, launch settings). The backward is in :mod:`.triton_backward`, the weights kernel in
:mod:`.triton_weights`, the decode kernel in :mod:`.triton_decode`, LSH hashing in
:mod:`.triton_hashing`.

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
LSH rounds either run over sorted copies of the rows or (``INDEXED``) read the unsorted items
through each sorted slot's row and write each round's output at its queries' rows.

Shape legend: B batch, H query heads, Hkv kv heads (``GROUP = H // Hkv``), T queries, S keys,
D head dim, Dv value dim, BM / BN query / key tile.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_interpreter import apply_fixes
from .triton_plan import interpreting

__all__ = ["fwd", "LOG2E"]

LOG2E = 1.4426950408889634
SELF_SCORE = -1e5  # shared-QK: the score of an item with itself (as lsh's SELF_SCORE)

apply_fixes()


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
def _rows_of(ROWS, rows_off, slots, n, INDEXED: tl.constexpr):
    """The rows of Q / K / V that tile positions ``slots`` read: the positions themselves, or
    (``INDEXED``: LSH rounds over unsorted items) the item in each sorted slot."""
    if INDEXED:
        return tl.load(ROWS + rows_off + slots, mask=slots < n, other=0).to(tl.int64)
    return slots


@triton.jit
def _query_of(IDS, ids_off, slots, n, INDEXED: tl.constexpr):
    """Where each row's output goes: the row itself, or (``INDEXED``) the query position of the
    item in each sorted slot (-1: not a query)."""
    if INDEXED:
        return tl.load(IDS + ids_off + slots, mask=slots < n, other=-1).to(tl.int64)
    return slots


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_n, offs_d, offs_dv, S,
              qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off, ROWS, rows_off,
              BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
              DV_REAL: tl.constexpr,
              MASKED: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
              SELF2: tl.constexpr, EVEN_S: tl.constexpr, IEEE: tl.constexpr, INDEXED: tl.constexpr):
    """One key tile of the online softmax: returns the updated ``(acc, l_i, m_i)``."""
    cols = start_n + offs_n
    krow = _rows_of(ROWS, rows_off, cols, S, INDEXED)
    if EVEN_S and D == D_REAL and DV == DV_REAL:  # no bounds to check: plain (vectorised) loads
        kt = tl.load(K + k_off + krow[None, :] * s_kt + offs_d[:, None])  # (D, BN)
    else:
        kt = tl.load(K + k_off + krow[None, :] * s_kt + offs_d[:, None],
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
        v = tl.load(V + v_off + krow[:, None] * s_vt + offs_dv[None, :])  # (BN, DV)
    else:
        v = tl.load(V + v_off + krow[:, None] * s_vt + offs_dv[None, :],
                    mask=(cols[:, None] < S) & (offs_dv[None, :] < DV_REAL), other=0.0)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, F_NUM, F_IDX, P_NUM, P_IDX, P_LIB, SUB, IDS, ROWS,
                s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                s_nb, s_nh, s_ib, s_ih, s_iq, s_idb, s_idh, s_idr, s_rwb, s_rwh,
                H, GROUP, T, S, T_OUT, B_ITEMS, qk_scale, n_other, n_chunks, causal_off,
                BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, D_REAL: tl.constexpr,
                DV_REAL: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr,
                SELF2: tl.constexpr, EVEN_S: tl.constexpr, IEEE: tl.constexpr, INDEXED: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    bi = b % B_ITEMS  # the batch of Q / K / V (LSH: every round reads the same items)
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    rows_off = b * s_rwb + h * s_rwh
    qrow = _rows_of(ROWS, rows_off, offs_m, T, INDEXED)
    q = tl.load(Q + bi * s_qb + h * s_qh + qrow[:, None] * s_qt + offs_d[None, :],
                mask=(offs_m[:, None] < T) & (offs_d[None, :] < D_REAL), other=0.0)
    k_off = bi * s_kb + hk * s_kh
    v_off = bi * s_vb + hk * s_vh
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
                                  ROWS, rows_off, BM, BN, D, DV, D_REAL, DV_REAL, False, MODE, CAUSAL, SHARED, SELF2,
                                  EVEN_S, IEEE, INDEXED)
    n_part = tl.load(P_NUM + num_off)
    for it in range(n_part):
        start_n = tl.load(P_IDX + idx_off + it) * BN
        lib = tl.load(P_LIB + idx_off + it)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_kt, s_vt, start_n, offs_m, offs_n, offs_d,
                                  offs_dv, S, qk_scale, SUB, lib, IDS, ids_off, s_idr, n_other, n_chunks, causal_off,
                                  ROWS, rows_off, BM, BN, D, DV, D_REAL, DV_REAL, True, MODE, CAUSAL, SHARED, SELF2,
                                  EVEN_S, IEEE, INDEXED)
    dead = l_i == 0.0
    l_safe = tl.where(dead, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(dead, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    dest = _query_of(IDS, ids_off, offs_m, T, INDEXED)  # INDEXED: each query's row of its round
    rows = (dest >= 0) & (offs_m < T)
    tl.store(OUT + b * s_ob + h * s_oh + dest[:, None] * s_ot + offs_dv[None, :], out.to(OUT.dtype.element_ty),
             mask=rows[:, None] & (offs_dv[None, :] < DV_REAL))
    tl.store(LSE + bh * T_OUT + dest, lse, mask=rows)


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


class _Layout(NamedTuple):
    """Where the kernels' rows are: ``rows`` (with its two strides) the item row of each sorted
    slot, or a dummy; ``b_out`` batches of ``t_slots`` rows walked, ``t_out`` rows per output
    batch, ``b_items`` batches of Q / K / V."""

    rows: Tensor
    s_rwb: int
    s_rwh: int
    b_out: int
    t_slots: int
    t_out: int
    b_items: int
    indexed: bool


def _layout(q: Tensor, hashed) -> _Layout:
    if hashed is None or hashed.rows is None:
        return _Layout(_dummy(q.device), 0, 0, q.shape[0], q.shape[2], q.shape[2], q.shape[0], False)
    rows = hashed.rows  # (R * B, H, slots) int32
    return _Layout(rows, rows.stride(0), rows.stride(1), rows.shape[0], rows.shape[2], hashed.n_queries, q.shape[0],
                   True)


def _prepared(q: Tensor, k: Tensor, v: Tensor, hashed) -> tuple[_Layout, Tensor, Tensor, Tensor, int]:
    """A launch's row layout, its q, k and v (dense where rows are indexed: the per-round gradient
    slices take the items' strides) and the number of key rows the kernels walk."""
    lay = _layout(q, hashed)
    if lay.indexed:
        q, k, v = (x.contiguous() for x in (q, k, v))
    return lay, q, k, v, (lay.t_slots if lay.indexed else k.shape[2])


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
    of ``plan`` (tiles ``plan.bm x plan.bn``). With ``hashed.rows`` (LSH rounds read through the
    sort order) q, k and v are the unsorted items ``(B, H, N+1, E)`` and the results are
    ``(R*B, H, n_queries, Dv)`` and ``(R*B, H, n_queries)``, each round's queries in their order."""
    lay, q, k, v, s = _prepared(q, k, v, hashed)
    b, h, _, d = q.shape
    hkv = k.shape[1]
    out = torch.empty(lay.b_out, h, lay.t_out, v.shape[-1], device=q.device, dtype=q.dtype)
    lse = torch.empty(lay.b_out, h, lay.t_out, device=q.device, dtype=torch.float32)
    (ids, *ids_args), flags = _mode_args(hashed, q.device)
    consts, qk_scale = _common(q, k, v, scale)
    f_num, f_idx, p_num, p_idx, p_lib = plan.kv_lists
    sub = plan.sub
    grid = (triton.cdiv(lay.t_slots, plan.bm), lay.b_out * h)
    _fwd_kernel[grid](q, k, v, out, lse, f_num, f_idx, p_num, p_idx, p_lib, sub, ids, lay.rows,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                      *plan.strides(f_num, f_idx), ids_args[0], ids_args[1], ids_args[2], lay.s_rwb, lay.s_rwh,
                      h, h // hkv, lay.t_slots, s, lay.t_out, lay.b_items, qk_scale, *ids_args[3:],
                      BM=plan.bm, BN=plan.bn, EVEN_S=s % plan.bn == 0, INDEXED=lay.indexed, **consts, **flags,
                      **_fwd_warps(*_launch(launch, "")))
    return out, lse


def _launch(launch: dict | None, prefix: str) -> tuple[int | None, int | None]:
    launch = launch or {}
    return launch.get(prefix + "num_warps"), launch.get(prefix + "num_stages")
