"""The first benchmark: exact implementations (sdpa, reference, ...) against each other,
causal and not, over sequence lengths. ``benchmarks/bench_exact.py`` runs the full sizes,
``attnkit bench`` a quick version."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import masks
from ..functional import attention
from .bench import Results, attention_flops, matmul_flops_per_s, time_fn

__all__ = ["run_exact"]


def _inputs(lq: int, heads: int, head_dim: int, dtype: torch.dtype, grad: bool):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, lq, head_dim, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def run_exact(lengths: Sequence[int], *, impls: Sequence[str] = ("sdpa", "reference"), heads: int = 8,
              head_dim: int = 64, dtype: torch.dtype = torch.float32, backward: bool = False,
              repeats: int = 5, max_reference_len: int = 8192) -> Results:
    """Time every impl on causal and non-causal problems; ratios are against ``sdpa``."""
    res = Results("exact", meta={"heads": heads, "head_dim": head_dim, "dtype": str(dtype), "backward": backward,
                                 "mm_flops_per_s": matmul_flops_per_s(dtype)})
    for lq in lengths:
        for causal in (False, True):
            mask = masks.causal() if causal else None
            q, k, v = _inputs(lq, heads, head_dim, dtype, backward)
            for impl in impls:
                if impl == "reference" and lq > max_reference_len:
                    res.add({"T": lq, "causal": causal}, impl, None, note="skipped: T x S buffer too large")
                    continue

                def step(impl=impl, mask=mask, q=q, k=k, v=v):
                    out = attention(q, k, v, mask, impl=impl)
                    if backward:
                        out.sum().backward()

                t = time_fn(step, repeats=repeats)
                flops = attention_flops(1, heads, lq, lq, head_dim, density=0.5 if causal else 1.0, backward=backward)
                res.add({"T": lq, "causal": causal}, impl, t.median,
                        gflops=flops / t.median / 1e9, mm_fraction=flops / t.median / res.meta["mm_flops_per_s"])
    return res
