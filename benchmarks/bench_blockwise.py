"""Blockwise exact attention against sdpa, compiled FlexAttention and the reference.

    python benchmarks/bench_blockwise.py --quick                       # T = 512, 1024, fp32, both modes
    python benchmarks/bench_blockwise.py --lengths 1024 2048 4096 --dtype bfloat16 --mode fwdbwd
    python benchmarks/bench_blockwise.py --lengths 16384 --masks causal random --memory
    python benchmarks/bench_blockwise.py --lengths 2048 4096 --memory-only    # peak memory only

B = 1, H = 8, D = 64. Masks: ``none``, ``causal``, ``window`` (causal sliding window of 256 keys,
``masks.window(255, 0)``) and ``random`` (an arbitrary 50%-dense mask, given to every
implementation as the same precomputed bool tensor). Columns:

* ``blockwise``: ``attnkit.attention(..., impl="blockwise")``;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` called directly, with
  ``is_causal=True`` for the causal mask and the precomputed dense bool mask for window/random
  (its construction is not timed);
* ``flex``: ``torch.compile(flex_attention)`` with the equivalent ``mask_mod`` and a block mask;
  its compile time (first call) is reported separately; no backward on CPU in torch 2.13;
* ``reference``: ``impl="reference"``, up to ``--max-reference-len`` (its T x S buffers).

Times are medians; ratios are to sdpa measured in the same run; ``mm%`` is achieved GFLOP/s
(matmul FLOPs on the allowed pairs) over ``torch.mm`` throughput in the same dtype, measured at
the start of the run. ``--memory`` adds peak extra resident memory of each implementation,
measured in a fresh subprocess after one warm-up call. Rows merge into
``benchmarks/results/blockwise_<dtype>_<mode>.json`` (a re-measured case replaces the old row).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import attnkit
from attnkit import masks
from attnkit.eval.bench import Results, attention_flops, matmul_flops_per_s, peak_memory, time_fn

HEADS, HEAD_DIM, WINDOW = 8, 64, 256
MASKS = ("none", "causal", "window", "random")
IMPLS = ("blockwise", "sdpa", "flex", "reference")
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# problem construction
# ----------------------------------------------------------------------------------------------


def mask_object(name: str) -> masks.Mask | None:
    return {"none": None, "causal": masks.causal(), "window": masks.window(WINDOW - 1, 0),
            "random": masks.random(0.5, seed=0)}[name]


def dense_mask(name: str, t: int, rows: int = 1024) -> torch.Tensor | None:
    """The (T, T) bool mask, built a block of rows at a time (no T x T int64 temporaries)."""
    m = mask_object(name)
    if m is None:
        return None
    out = torch.empty(t, t, dtype=torch.bool)
    j = torch.arange(t).view(1, 1, 1, t)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.int64)
    for i0 in range(0, t, rows):
        i = torch.arange(i0, min(t, i0 + rows)).view(1, 1, -1, 1)
        out[i0:i0 + rows] = m.mod(zero, zero, i, j, t, t).expand(1, 1, i.shape[2], t)[0, 0]
    return out


def inputs(t: int, dtype: torch.dtype, grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, HEADS, t, HEAD_DIM, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


def make_step(impl: str, t: int, mask: str, dtype: torch.dtype, backward: bool,
              dense: torch.Tensor | None) -> tuple[Callable[[], None], dict]:
    """A zero-argument callable running one forward (+ backward) and setup facts (compile time)."""
    q, k, v = inputs(t, dtype, backward)
    grad = torch.randn(1, HEADS, t, HEAD_DIM, generator=torch.Generator().manual_seed(1)).to(dtype)
    info: dict = {}
    if impl == "blockwise" or impl == "reference":
        m = masks.from_tensor(dense) if mask == "random" else mask_object(mask)
        fn = lambda: attnkit.attention(q, k, v, m, impl=impl)  # noqa: E731
    elif impl == "sdpa":
        causal = mask == "causal"
        attn_mask = None if mask in ("none", "causal") else dense
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)  # noqa: E731
    elif impl == "flex":
        fn = _flex(q, k, v, t, mask, dense, info)
    else:
        raise ValueError(f"unknown impl {impl!r}")

    def step() -> None:
        out = fn()
        if backward:
            out.backward(grad)

    return step, info


def _flex(q, k, v, t, mask, dense, info):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    mods = {
        "none": None,
        "causal": lambda b, h, qi, ki: qi >= ki,
        "window": lambda b, h, qi, ki: (qi >= ki) & (qi - ki < WINDOW),
        "random": lambda b, h, qi, ki: dense[qi, ki],
    }
    t0 = time.perf_counter()
    block_mask = None if mods[mask] is None else create_block_mask(mods[mask], None, None, t, t, device="cpu")
    info["block_mask_s"] = time.perf_counter() - t0
    torch._dynamo.reset()  # a fresh compile per case: past the recompile limit dynamo runs eager
    compiled = torch.compile(flex_attention, dynamic=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled(q, k, v, block_mask=block_mask)
    info["compile_s"] = time.perf_counter() - t0
    return lambda: compiled(q, k, v, block_mask=block_mask)


def density(dense: torch.Tensor | None, t: int) -> float:
    return 1.0 if dense is None else float(dense.sum()) / (t * t)


# ----------------------------------------------------------------------------------------------
# memory probe (runs in a fresh process through attnkit.eval.bench.peak_memory)
# ----------------------------------------------------------------------------------------------


def memory_case(impl: str, t: int, mask: str, dtype: str, backward: bool) -> Callable[[], None]:
    """Builds the case and runs it once (warm-up, compilation); the probe measures the next run."""
    torch.set_num_threads(2)
    dense = dense_mask(mask, t)  # an input for every impl (built before the measurement)
    step, _ = make_step(impl, t, mask, getattr(torch, dtype), backward, dense)
    step()  # peak_memory measures the second run from a reset high-water mark
    return step


def measure_memory(impl: str, t: int, mask: str, dtype: str, backward: bool) -> float | None:
    res = peak_memory("bench_blockwise:memory_case",
                      {"impl": impl, "t": t, "mask": mask, "dtype": dtype, "backward": backward},
                      extra_path=[HERE, *sys.path], timeout=900)
    return None if res is None else round(res["peak_extra_mib"], 1)


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def skip_reason(impl: str, t: int, backward: bool, args) -> str | None:
    if impl == "flex" and backward:
        return "FlexAttention has no CPU backward in torch 2.13"
    if impl == "reference" and t > args.max_reference_len:
        return f"T x S buffers: {HEADS * t * t * 4 / 2**30:.1f} GiB per fp32 score matrix"
    return None


def run(args) -> Results:
    dtype = getattr(torch, args.dtype)
    backward = args.mode == "fwdbwd"
    mm = max(matmul_flops_per_s(dtype) for _ in range(2))  # the better of two: a ceiling
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    res = Results("blockwise", meta={"heads": HEADS, "head_dim": HEAD_DIM, "dtype": args.dtype,
                                     "mode": args.mode, "window": WINDOW})
    for t in args.lengths:
        for mask in args.masks:
            dense = dense_mask(mask, t)
            dens = density(dense, t)
            flops = attention_flops(1, HEADS, t, t, HEAD_DIM, density=dens, backward=backward)
            for impl in args.impls:
                case = {"T": t, "mask": mask}
                extra = {"run": stamp, "mm_flops_per_s": mm, "density": round(dens, 4)}
                why = skip_reason(impl, t, backward, args)
                if why is not None:
                    res.add(case, impl, None, note=why, **extra)
                    continue
                step, info = make_step(impl, t, mask, dtype, backward, dense)
                timing = time_fn(step, warmup=1, repeats=args.repeats if t <= 4096 else 2, max_seconds=20)
                extra.update(info, gflops=flops / timing.median / 1e9, mm_fraction=flops / timing.median / mm)
                if args.memory:
                    extra["peak_extra_mib"] = measure_memory(impl, t, mask, args.dtype, backward)
                res.add(case, impl, timing.median, **extra)
                del step
                print(f"  T={t} {mask:<7} {impl:<10} {timing.median * 1e3:9.1f} ms "
                      f"{extra['mm_fraction']:.0%} of mm", flush=True)
    return res


def run_memory(args) -> Results:
    """Peak extra memory only (no timing): one subprocess per implementation and case."""
    res = Results("blockwise_memory", meta={"heads": HEADS, "head_dim": HEAD_DIM, "window": WINDOW})
    backward = args.mode == "fwdbwd"
    for t in args.lengths:
        for mask in args.masks:
            for impl in args.impls:
                why = skip_reason(impl, t, backward, args)
                mib = None if why else measure_memory(impl, t, mask, args.dtype, backward)
                res.add({"T": t, "mask": mask, "dtype": args.dtype, "mode": args.mode}, impl, None,
                        peak_extra_mib=mib, note=why or ("failed (out of memory?)" if mib is None else ""))
                print(f"  T={t} {mask:<7} {impl:<10} {'-' if mib is None else f'{mib:.0f} MiB'}", flush=True)
    return res


def print_memory(res: Results) -> None:
    impls = list(dict.fromkeys(r["impl"] for r in res.rows))
    print("\npeak extra memory (MiB), " + res.rows[0]["dtype"] + " " + res.rows[0]["mode"])
    print("| T | mask | " + " | ".join(impls) + " | T x S fp32 score matrix (all heads) |")
    print("|---|---|" + "---|" * (len(impls) + 1))
    for t, mask in dict.fromkeys((r["T"], r["mask"]) for r in res.rows):
        cells = []
        for impl in impls:
            r = next(x for x in res.rows if (x["T"], x["mask"], x["impl"]) == (t, mask, impl))
            cells.append("-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}")
        print(f"| {t} | {mask} | " + " | ".join(cells) + f" | {HEADS * t * t * 4 / 2**20:.0f} |")


def merge_save(res: Results, path: Path, extra_keys: tuple[str, ...] = ()) -> Path:
    """Write this run's rows into ``path``, replacing rows of the same (T, mask, impl, ...)."""
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    key = lambda r: (r["T"], r["mask"], r["impl"], *(r[k] for k in extra_keys))  # noqa: E731
    keys = {key(r) for r in res.rows}
    merged = [r for r in old if key(r) not in keys] + res.rows
    merged.sort(key=lambda r: (*(str(r[k]) for k in extra_keys), r["T"], MASKS.index(r["mask"]),
                               IMPLS.index(r["impl"])))
    out = Results(res.name, rows=merged, meta=res.meta)
    return out.save(path)


def print_tables(res: Results, args) -> None:
    print(f"\nblockwise vs peers: B=1 H={HEADS} D={HEAD_DIM} {args.dtype} {args.mode}, "
          f"threads={torch.get_num_threads()}, torch.mm {res.rows[0]['mm_flops_per_s'] / 1e9:.0f} GFLOP/s")
    print(res.table(["T", "mask"], baseline="sdpa"))
    print("\nachieved fraction of torch.mm throughput" + (" / peak extra memory (MiB)" if args.memory else ""))
    impls = list(dict.fromkeys(r["impl"] for r in res.rows))
    print("| T | mask | " + " | ".join(impls) + " |")
    print("|---|---|" + "---|" * len(impls))
    cases = dict.fromkeys((r["T"], r["mask"]) for r in res.rows)
    for t, mask in cases:
        cells = []
        for impl in impls:
            r = next(x for x in res.rows if (x["T"], x["mask"], x["impl"]) == (t, mask, impl))
            if r["seconds"] is None:
                cells.append("-")
                continue
            cell = f"{r['mm_fraction']:.0%}"
            if args.memory:
                mem = r.get("peak_extra_mib")
                cell += f" / {'-' if mem is None else f'{mem:.0f}'}"
            cells.append(cell)
        print(f"| {t} | {mask} | " + " | ".join(cells) + " |")
    flex = [r for r in res.rows if r["impl"] == "flex" and "compile_s" in r]
    if flex:
        print("\nflex compile time (first call) / block-mask creation, seconds")
        for r in flex:
            print(f"  T={r['T']:<6} {r['mask']:<7} compile {r['compile_s']:.1f}  block mask {r['block_mask_s']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--mode", default="fwdbwd", choices=["fwd", "fwdbwd"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-reference-len", type=int, default=4096)
    p.add_argument("--memory", action="store_true", help="also measure peak memory in subprocesses")
    p.add_argument("--memory-only", action="store_true",
                   help="only peak memory (no timing), into benchmarks/results/blockwise_memory.json")
    p.add_argument("--quick", action="store_true", help="T = 512, 1024, fp32, forward and fwd+bwd; no JSON")
    args = p.parse_args()
    if args.quick:
        args.lengths = [512, 1024]
        for mode in ("fwd", "fwdbwd"):
            args.mode = mode
            print_tables(run(args), args)
        return
    if args.memory_only:
        res = run_memory(args)
        print_memory(res)
        print(f"\nwrote {merge_save(res, HERE / 'results' / 'blockwise_memory.json', ('dtype', 'mode'))}")
        return
    res = run(args)
    print_tables(res, args)
    path = HERE / "results" / f"blockwise_{args.dtype}_{args.mode}.json"
    print(f"\nwrote {merge_save(res, path)}")


if __name__ == "__main__":
    main()
