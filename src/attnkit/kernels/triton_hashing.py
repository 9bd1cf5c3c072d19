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
def _projections(x, ROT, offs_d, r, c0, n_half, s_rd, s_rr, BC: tl.constexpr, D_REAL: tl.constexpr,
                 IEEE: tl.constexpr):
    """``x R_r`` on the rotation columns ``c0 .. c0 + BC`` of round ``r``: ``(BM, BC)`` float32."""
    cols = c0 + tl.arange(0, BC)
    rot = tl.load(ROT + offs_d[:, None] * s_rd + r * s_rr + cols[None, :],
                  mask=(offs_d[:, None] < D_REAL) & (cols[None, :] < n_half), other=0.0)
    if IEEE:
        return tl.dot(x, rot, input_precision="ieee")
    return tl.dot(x, rot.to(x.dtype))  # the rotations are bf16 values: exact in x's dtype only if bf16


@triton.jit
def _hash_kernel(X, ROT, OUT, n_rows, n_half, s_x, s_rd, s_rr, n_rounds,
                 BM: tl.constexpr, BC: tl.constexpr, D: tl.constexpr, D_REAL: tl.constexpr, IEEE: tl.constexpr):
    """Angular LSH buckets of a block of rows for one round: the first argmax of ``[xR, -xR]``.

    Two passes over the round's rotations, the projections never reaching memory: the largest
    ``|xR|`` per row (a plain float max), then the first column reaching it, counted as
    ``c`` where ``xR`` is positive and ``c + n_half`` where it is negative; the smallest such code
    is torch's ``argmax([xR, -xR])`` (the positive side wins a tie, as it comes first). The second
    pass recomputes the same products, so the comparison is exact."""
    pid = tl.program_id(0)
    r = tl.program_id(1)
    rows = (pid * BM + tl.arange(0, BM)).to(tl.int64)
    offs_d = tl.arange(0, D)
    x = tl.load(X + rows[:, None] * s_x + offs_d[None, :], mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D_REAL),
                other=0.0)
    top = tl.zeros([BM], tl.float32)
    for c0 in range(0, n_half, BC):  # columns past n_half project to 0, which never exceeds |xR|
        proj = _projections(x, ROT, offs_d, r, c0, n_half, s_rd, s_rr, BC, D_REAL, IEEE)
        top = tl.maximum(top, tl.max(tl.abs(proj), 1))
    big = 2 * n_half
    bucket = tl.zeros([BM], tl.int32) + big
    for c0 in range(0, n_half, BC):
        proj = _projections(x, ROT, offs_d, r, c0, n_half, s_rd, s_rr, BC, D_REAL, IEEE)
        cols = c0 + tl.arange(0, BC)
        code = tl.where(proj < 0, cols[None, :] + n_half, cols[None, :])
        hit = (tl.abs(proj) == top[:, None]) & (cols[None, :] < n_half)
        bucket = tl.minimum(bucket, tl.min(tl.where(hit, code, big), 1))
    bucket = tl.where(bucket == big, 0, bucket)  # a row with NaN: bucket 0 (its attention output is NaN)
    tl.store(OUT + rows * n_rounds + r, bucket.to(tl.int64), mask=rows < n_rows)


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
