"""Per-call overhead: what attnkit adds around the kernel on small, frequent calls.

Attention runs once per layer per generated token, so a decode step (one query over a KV cache)
is where the wrapper's Python cost shows. Cases, each against the raw
``F.scaled_dot_product_attention`` call measured in the same run:

* decode: q (1, 8, 1, 64), k/v (1, 8, 512, 64) — ``impl="sdpa"``, ``auto`` with no mask,
  ``auto`` with ``masks.causal()`` (a decode step's causal mask hides nothing);
* prefill: q = k = v (1, 8, 128, 64), causal — ``auto`` against raw ``is_causal=True``.

    python benchmarks/bench_overhead.py            # prints the table, writes results/overhead.json
    python benchmarks/bench_overhead.py --threads 1

Times are the median of repeated loops of ``--calls`` calls, in microseconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import attnkit
from attnkit import masks
from attnkit.eval.bench import Results


def per_call_us(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` loops of ``calls`` calls, in microseconds per call."""
    for _ in range(max(10, calls // 10)):
        fn()
    loops = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        loops.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(loops)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls per timed loop")
    p.add_argument("--repeats", type=int, default=7, help="timed loops (median taken)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    res = Results("overhead", meta={"threads": torch.get_num_threads(), "calls": args.calls})
    dq = torch.randn(1, 8, 1, 64, generator=g)
    dk, dv = torch.randn(1, 8, 512, 64, generator=g), torch.randn(1, 8, 512, 64, generator=g)
    pq = torch.randn(1, 8, 128, 64, generator=g)
    cases = {
        "decode": [
            ("raw", lambda: F.scaled_dot_product_attention(dq, dk, dv)),
            ("sdpa", lambda: attnkit.attention(dq, dk, dv, impl="sdpa")),
            ("auto", lambda: attnkit.attention(dq, dk, dv)),
            ("auto+causal", lambda: attnkit.attention(dq, dk, dv, masks.causal())),
        ],
        "prefill causal": [
            ("raw", lambda: F.scaled_dot_product_attention(pq, pq, pq, is_causal=True)),
            ("sdpa", lambda: attnkit.attention(pq, pq, pq, masks.causal(), impl="sdpa")),
            ("auto+causal", lambda: attnkit.attention(pq, pq, pq, masks.causal())),
        ],
    }
    with torch.inference_mode():
        for case, fns in cases.items():
            for name, fn in fns:
                us = per_call_us(fn, args.calls, args.repeats)
                res.add({"case": case}, name, us / 1e6, us_per_call=us)
    print(f"per-call time, threads={torch.get_num_threads()} (ratios to the raw SDPA call, same run)")
    print("| case | call | us per call | / raw |\n|---|---|---|---|")
    for case in cases:
        rows = [r for r in res.rows if r["case"] == case]
        raw = next(r["us_per_call"] for r in rows if r["impl"] == "raw")
        for r in rows:
            print(f"| {case} | {r['impl']} | {r['us_per_call']:.1f} | {r['us_per_call'] / raw:.2f}x |")
    out = Path(__file__).parent / "results" / "overhead.json"
    print(f"wrote {res.save(out)}")


if __name__ == "__main__":
    main()
