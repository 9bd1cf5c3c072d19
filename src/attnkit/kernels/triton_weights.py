"""Triton kernel of the attention weights ``exp(s - lse)``, recomputed tile by tile from the
saved log-sum-exp over a tile plan: zeros on empty tiles, the sub-mask on partial ones.

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_attention import _common, _warps

__all__ = ["weights"]


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
