"""Does ``torch.compile`` close blockwise's gap to SDPA on this CPU? (a probe, not a suite)

Times, in one run, the forward of: SDPA; attnkit's ``blockwise``; the same online-softmax tile
loop written as one plain function and compiled with inductor (fixed shapes, so the tile loop
is unrolled and the per-tile softmax updates can fuse into one pass per tile); and compiled
naive attention (scores, softmax, weights @ v in one graph). Prints a table of ratios to SDPA
and writes ``benchmarks/results/compile_probe.json``.

    python benchmarks/probe_compile_blockwise.py --lengths 1024 4096
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import attnkit
from attnkit import masks
from attnkit.eval.bench import Results, time_fn

HEADS, HEAD_DIM = 8, 64


def tile_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int,
              causal: bool) -> torch.Tensor:
    """Online-softmax forward over ``(block_q, block_k)`` tiles: q, k, v ``(B*H, T, D)``."""
    n, t, d = q.shape
    scale = 1.0 / math.sqrt(d)
    outs = []
    for i0 in range(0, t, block_q):
        qi = q[:, i0:i0 + block_q] * scale
        m = torch.full((n, qi.shape[1], 1), -math.inf, device=q.device)
        lsum = torch.zeros_like(m)
        acc = torch.zeros(n, qi.shape[1], v.shape[-1], device=q.device)
        stop = min(t, i0 + block_q) if causal else t
        for j0 in range(0, stop, block_k):
            s = qi @ k[:, j0:j0 + block_k].transpose(1, 2)  # (N, bq, bk)
            if causal and j0 + block_k > i0:
                rows = torch.arange(i0, i0 + qi.shape[1], device=q.device).view(-1, 1)
                cols = torch.arange(j0, j0 + s.shape[-1], device=q.device).view(1, -1)
                s = s.masked_fill(cols > rows, -math.inf)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            p = torch.exp(s - m_new)
            alpha = torch.exp(m - m_new)
            lsum = lsum * alpha + p.sum(-1, keepdim=True)
            acc = acc * alpha + p @ v[:, j0:j0 + block_k]
            m = m_new
        outs.append(acc / lsum)
    return torch.cat(outs, 1)


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        t = q.shape[-2]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), -math.inf)
    return torch.softmax(s, -1) @ v


def run_case(t: int, causal: bool, bq: int, bk: int, res: Results, compile_s: dict[str, float]) -> None:
    """Time every variant on one ``(T, causal)`` case and record it in ``res``."""
    q, k, v = (torch.randn(1, HEADS, t, HEAD_DIM) for _ in range(3))
    q3, k3, v3 = (x.view(HEADS, t, HEAD_DIM) for x in (q, k, v))
    mask = masks.causal() if causal else None
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    loop_c = torch.compile(lambda a, b, c: tile_loop(a, b, c, bq, bk, causal), dynamic=False)
    naive_c = torch.compile(lambda a, b, c: naive(a, b, c, causal), dynamic=False)
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "blockwise": lambda: attnkit.attention(q, k, v, mask, impl="blockwise"),
        "tile_loop_eager": lambda: tile_loop(q3, k3, v3, bq, bk, causal),
        "tile_loop_compiled": lambda: loop_c(q3, k3, v3),
        "naive_compiled": lambda: naive_c(q, k, v),
    }
    with torch.no_grad():
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()  # first call: compiles the compiled variants
            if name.endswith("compiled"):
                compile_s[f"{name} T={t} causal={causal}"] = round(time.perf_counter() - t0, 1)
            err = (out.view_as(want) - want).abs().max().item()
            res.add({"T": t, "causal": causal}, name, time_fn(fn, warmup=1, repeats=5).median, max_abs_err=err)
            print(f"  T={t} causal={causal} {name:<20} err {err:.1e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--block", type=int, nargs=2, default=[256, 512], metavar=("BQ", "BK"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bq, bk = args.block
    res = Results("compile_probe", meta={"heads": HEADS, "head_dim": HEAD_DIM, "block": [bq, bk], "mode": "fwd"})
    compile_s: dict[str, float] = {}
    for t in args.lengths:
        for causal in (False, True):
            run_case(t, causal, bq, bk, res, compile_s)
    print(res.table(["T", "causal"], baseline="sdpa"))
    print("compile time of the first call, s:", compile_s)
    res.meta["compile_seconds"] = compile_s
    out = Path(__file__).parent / "results" / "compile_probe.json"
    res.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
