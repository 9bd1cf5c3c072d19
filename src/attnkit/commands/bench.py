"""``attnkit bench``: a quick exact-attention benchmark (sdpa vs reference), printed as a table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="quick benchmark: implementations timed against sdpa in one run")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024], help="sequence lengths T")
    p.add_argument("--impls", nargs="+", default=["sdpa", "reference"], help="implementations to time")
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.exact import run_exact

    res = run_exact(args.lengths, impls=args.impls, backward=args.backward, repeats=3)
    print(f"exact attention, B=1 H=8 D=64 fp32, {'fwd+bwd' if args.backward else 'forward'}; "
          f"ratio = time / sdpa time (same run)")
    print(res.table(["T", "causal"], baseline="sdpa"))
    if args.json:
        print(f"wrote {res.save(args.json)}")
    return 0
