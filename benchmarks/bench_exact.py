"""Exact attention: sdpa vs reference (and any other exact impl named), causal and not.

    python benchmarks/bench_exact.py                  # T = 256..4096, forward, fp32
    python benchmarks/bench_exact.py --backward       # forward + backward
    python benchmarks/bench_exact.py --quick          # T = 256, 512

Prints a Markdown table of times and ratios to sdpa measured in the same run, with achieved
GFLOP/s as a fraction of torch.mm throughput, and writes benchmarks/results/exact*.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from attnkit.eval.exact import run_exact


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--impls", nargs="+", default=["sdpa", "reference"])
    p.add_argument("--backward", action="store_true")
    p.add_argument("--quick", action="store_true", help="T = 256, 512 only")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [256, 512] if args.quick else args.lengths
    res = run_exact(lengths, impls=args.impls, backward=args.backward)
    mode = "fwd+bwd" if args.backward else "fwd"
    print(f"exact attention, B=1 H=8 D=64 fp32, {mode}, threads={torch.get_num_threads()}, "
          f"torch.mm {res.meta['mm_flops_per_s'] / 1e9:.0f} GFLOP/s")
    print(res.table(["T", "causal"], baseline="sdpa"))
    print("\nfraction of torch.mm throughput:")
    for r in res.rows:
        if r["seconds"] is not None:
            print(f"  T={r['T']:<5} causal={r['causal']!s:<5} {r['impl']:<10} {r['mm_fraction']:.0%}")
    out = Path(__file__).parent / "results" / f"exact_{mode}.json"
    print(f"wrote {res.save(out)}")


if __name__ == "__main__":
    main()
