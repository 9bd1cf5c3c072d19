"""Triton angular-LSH hashing: ``argmax([xR, -xR])`` per round, the projections computed tile by
tile and reduced in registers (never written to memory).

Shape legend: N rows, D dim, R rounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_attention import _pow2
from .triton_plan import interpreting

__all__ = ["hash_buckets"]


@triton.jit
def _keyed(proj, idx):
    """Order-preserving int64 keys of float32 ``proj``, the column ``idx`` in the low bits so that
    of equal values the first column is the largest key (one max reduction gives value and index)."""
    bits = tl.where(proj == 0.0, 0.0, proj).to(tl.int32, bitcast=True)  # -0.0 as +0.0, as torch compares
    mono = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # the float order as signed integers
    return (mono.to(tl.int64) << 32) | (0x7FFFFFFF - idx).to(tl.int64)


@triton.jit
def _hash_kernel(X, ROT, OUT, n_rows, n_half, s_x, s_rd, s_rr, n_rounds,
                 BM: tl.constexpr, BC: tl.constexpr, D: tl.constexpr, D_REAL: tl.constexpr, IEEE: tl.constexpr):
    """Angular LSH buckets of a block of rows for one round: the first argmax of ``[xR, -xR]`` over
    the round's ``n_half`` rotations, taken tile by tile as one int64 max per tile (value and
    column packed), the projections never reaching memory."""
    pid = tl.program_id(0)
    r = tl.program_id(1)
    rows = (pid * BM + tl.arange(0, BM)).to(tl.int64)
    offs_d = tl.arange(0, D)
    x = tl.load(X + rows[:, None] * s_x + offs_d[None, :], mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D_REAL),
                other=0.0)
    best = tl.full([BM], -1, tl.int64)  # below every key: of +p and -p one is >= 0
    for c0 in range(0, n_half, BC):
        cols = c0 + tl.arange(0, BC)
        rot = tl.load(ROT + offs_d[:, None] * s_rd + r * s_rr + cols[None, :],
                      mask=(offs_d[:, None] < D_REAL) & (cols[None, :] < n_half), other=0.0)
        if IEEE:
            proj = tl.dot(x, rot, input_precision="ieee")
        else:  # the rotations are bf16 values (random_rotations): exact in x's half dtype only if bf16
            proj = tl.dot(x, rot.to(x.dtype))
        key = tl.maximum(_keyed(proj, cols[None, :]), _keyed(-proj, cols[None, :] + n_half))  # (BM, BC)
        key = tl.where(cols[None, :] < n_half, key, -1)
        best = tl.maximum(best, tl.max(key, 1))
    bucket = 0x7FFFFFFF - (best & 0xFFFFFFFF)
    tl.store(OUT + rows * n_rounds + r, bucket, mask=rows < n_rows)


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
