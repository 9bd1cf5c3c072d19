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
