"""Triton split-key decode kernel: one query token over a long key cache, the query heads that
share a kv head as the rows of one product, the key splits merged by their log-sum-exp; the
weights written as it goes when asked for.

Shape legend: B batch, H query heads, Hkv kv heads, S keys, D head dim, Dv value dim.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_attention import LOG2E, _common, _pow2, _warps

__all__ = ["decode"]


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
