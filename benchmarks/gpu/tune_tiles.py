"""Tile sizes of ``triton_block_sparse`` on a GPU: forward and forward + backward of each
configuration at one size per mask (bf16, B=1, H=16), medians of ``triton.testing.do_bench``.

    python benchmarks/gpu/tune_tiles.py --T 16384 --D 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import attnkit
from attnkit import masks
from attnkit.masks import patterns

# forward settings (timed forward only) and backward settings (timed forward + backward, default forward)
FWD = [{}, {"num_stages": 2}, {"num_warps": 8, "num_stages": 2}, {"num_warps": 8, "num_stages": 3}, {"block_k": 128},
       {"block_k": 128, "num_warps": 8}, {"block_q": 64, "num_stages": 3}]
BWD = [{}, {"bwd_num_stages": 3}, {"bwd_block_q": 32, "bwd_block_k": 128, "bwd_num_stages": 3},
       {"bwd_num_warps": 8}, {"bwd_num_warps": 8, "bwd_num_stages": 3},
       {"bwd_block_q": 32, "bwd_block_k": 64, "bwd_num_stages": 3}]
MASKS = {"causal": lambda: masks.causal(), "window": lambda: masks.window(1024),
         "bigbird": lambda: patterns.bigbird(128, window_blocks=3, global_blocks=2, random_blocks=3)}  # as bench_gpu


def _time(q, k, v, go, mask, opts: dict, backward: bool) -> dict:
    """Median milliseconds of the forward, or of forward + backward, with these options."""
    from triton.testing import do_bench

    def fwd():
        with torch.no_grad():
            return attnkit.attention(q, k, v, mask, impl="triton_block_sparse", options=opts)

    def both():
        out = attnkit.attention(q, k, v, mask, impl="triton_block_sparse", options=opts)
        return torch.autograd.grad(out, (q, k, v), go)

    return {"ms": do_bench(both if backward else fwd, warmup=25, rep=100, return_mode="median")}


def _fastest(rows: list[dict], part: str) -> dict:
    """The options of ``part`` with the least total time over the masks (settings measured on
    every mask only); the defaults when none was."""
    totals: dict[str, list[float]] = {}
    for row in rows:
        if row["timed"] == part and "ms" in row:
            totals.setdefault(json.dumps(row["options"], sort_keys=True), []).append(row["ms"])
    n = max((len(v) for v in totals.values()), default=0)
    full = {k: sum(v) for k, v in totals.items() if len(v) == n}
    return json.loads(min(full, key=full.get)) if full else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=16384)
    p.add_argument("--D", type=int, nargs="+", default=[128])
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--masks", nargs="+", default=["causal", "window"], choices=list(MASKS))
    p.add_argument("--budget-s", type=float, default=90.0)
    p.add_argument("--json", default=None)
    p.add_argument("--best", default=None, help="write the fastest forward + backward options here (JSON)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for d in args.D:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, args.H, args.T, d, device="cuda", dtype=torch.bfloat16, generator=g)
                   .requires_grad_() for _ in range(3))
        go = torch.randn_like(q)
        for name in args.masks:
            mask = MASKS[name]()
            for part, opts in [("fwd", o) for o in FWD] + [("fwd+bwd", o) for o in BWD]:
                if time.perf_counter() - start > args.budget_s:
                    print("budget spent; stopping", flush=True)
                    break
                row = {"D": d, "mask": name, "timed": part, "options": opts}
                try:
                    row.update(_time(q, k, v, go, mask, opts, backward=part == "fwd+bwd"))
                except Exception as exc:  # a setting that fails to compile (shared memory) is reported
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.best:
        best = {**_fastest(rows, "fwd"), **_fastest(rows, "fwd+bwd")}
        print("fastest:", json.dumps(best), flush=True)
        with open(args.best, "w") as f:
            json.dump(best, f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"T": args.T, "H": args.H, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
