"""Block-sparse attention benchmark: ``impl="block_sparse"`` against its peers, measured in one run.

Columns (B=1, H=8, D=64, float32 by default):

* ``block_sparse``  attnkit, computing only the mask's kept tiles (the plan is built once per mask
  and size, like a FlexAttention block mask; its build time is reported as ``plan_s``);
* ``sdpa_masked``   ``F.scaled_dot_product_attention`` with the same dense boolean mask (built once);
* ``sdpa_causal``   ``F.scaled_dot_product_attention(is_causal=True)``, what users would otherwise run;
* ``flex``          ``torch.compile``d FlexAttention with the equivalent ``mask_mod`` and
  ``create_block_mask``; its first-call compile time (``compile_s``) and block-mask time
  (``block_mask_s``) are reported apart from its run time (forward only: FlexAttention has no
  backward on CPU in torch 2.13);
* ``local_attention`` lucidrains' ``LocalAttention`` (PyPI ``local-attention``; windows only, equal
  window: ``causal=True, look_backward=1, exact_windowsize=True``). Skipped with a printed reason
  when not installed; it is not an attnkit dependency.

Patterns: ``window256`` / ``window512`` (causal sliding window reaching 256 / 512 keys back, the
Longformer/Mistral setting) and ``bigbird`` (BigBird defaults: block 64, 3 window, 2 global,
3 random blocks). Ratios are column time / block_sparse time (> 1: block_sparse is faster).

Usage::

    python benchmarks/bench_block_sparse.py --quick          # T=4096, window512, forward (~1 min)
    python benchmarks/bench_block_sparse.py --T 16384 --patterns window512 --modes fwd fwd+bwd --tag 16k
    python benchmarks/bench_block_sparse.py --T 131072 --impls block_sparse --memory --tag 128k

Each run writes ``benchmarks/results/block_sparse_<tag>.json``. Columns are skipped with a
stated reason where they cannot run (dense masks past 32k: the T x T mask alone is 4 GiB at 64k
plus SDPA's float copy; quadratic columns past ``--max-dense`` for the time budget).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import attnkit
from attnkit.eval.bench import Results, matmul_flops_per_s, peak_memory, time_fn
from attnkit.impls import block_sparse as bsmod
from attnkit.masks import patterns
from attnkit.masks.plan import clear_plan_cache

HERE = Path(__file__).resolve().parent
IMPLS = ["block_sparse", "sdpa_masked", "sdpa_causal", "flex", "local_attention"]
PATTERNS = ["window256", "window512", "bigbird"]


def make_pattern(name: str):
    """The attnkit mask of a benchmark pattern."""
    if name.startswith("window"):
        return patterns.sliding_window(int(name[len("window"):]), causal=True)
    if name == "bigbird":
        return patterns.bigbird(64)
    raise SystemExit(f"unknown pattern {name!r}; choose from {PATTERNS}")


def _inputs(t: int, heads: int, dim: int, dtype: torch.dtype, grad: bool):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, t, dim, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def _local_attention(window: int):
    from local_attention import LocalAttention

    return LocalAttention(window_size=window, causal=True, look_backward=1, exact_windowsize=True, autopad=True,
                          use_rotary_pos_emb=False)


def _flex(mask, t: int):
    """Compiled flex_attention and its block mask; returns (fn, block_mask_seconds)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch._dynamo.reset()  # a fresh compile per mask: recompiling across masks fails in this torch
    _COMPILED.clear()
    t0 = time.perf_counter()
    block_mask = create_block_mask(mask.mask_mod(t, t), B=None, H=None, Q_LEN=t, KV_LEN=t, device="cpu")
    built = time.perf_counter() - t0
    compiled = _flex_compiled(flex_attention)
    return (lambda q, k, v: compiled(q, k, v, block_mask=block_mask)), built


_COMPILED = {}


def _flex_compiled(flex_attention):
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(flex_attention)
    return _COMPILED["fn"]


def runner(impl: str, pattern: str, t: int, heads: int = 8, dim: int = 64, backward: bool = False,
           dtype: torch.dtype = torch.float32):
    """A zero-argument callable running one step of ``impl`` (also the peak-memory probe target),
    plus a dict of one-off costs (plan / block mask build)."""
    mask = make_pattern(pattern)
    q, k, v = _inputs(t, heads, dim, dtype, backward)
    extra = {}
    if impl == "block_sparse":
        clear_plan_cache()  # time the plan build from scratch
        t0 = time.perf_counter()
        bsmod.plan_for(mask, t, t)
        extra["plan_s"] = time.perf_counter() - t0
        fn = lambda: attnkit.attention(q, k, v, mask, impl="block_sparse")  # noqa: E731
    elif impl == "sdpa_masked":
        dense = mask.dense(t, t)  # (T, T) bool, built once
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)  # noqa: E731
    elif impl == "sdpa_causal":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    elif impl == "flex":
        flex, extra["block_mask_s"] = _flex(mask, t)
        fn = lambda: flex(q, k, v)  # noqa: E731
    elif impl == "local_attention":
        la = _local_attention(int(pattern[len("window"):]))
        fn = lambda: la(q, k, v)  # noqa: E731
    else:
        raise SystemExit(f"unknown impl {impl!r}")

    def step():
        out = fn()
        if backward:
            out.sum().backward()
            for x in (q, k, v):
                x.grad = None
        return out

    return step, extra


def probe(impl: str, pattern: str, t: int, backward: bool = False):
    """Peak-memory probe target: builds the inputs and returns the step to measure."""
    step, _ = runner(impl, pattern, t, backward=backward)
    if impl == "flex":
        step()  # compile outside the measured call
    return step


def peak_extra_mib(impl: str, pattern: str, t: int, backward: bool) -> float | None:
    """Peak RSS (MiB) one step needs beyond its inputs, in a fresh process (None if it fails)."""
    res = peak_memory("bench_block_sparse:probe", {"impl": impl, "pattern": pattern, "t": t, "backward": backward},
                      extra_path=[HERE], timeout=3600)
    return None if res is None else float(res["peak_extra_mib"])


def skip_reason(impl: str, pattern: str, t: int, max_dense: int, backward: bool) -> str | None:
    if impl == "local_attention":
        if not pattern.startswith("window"):
            return "local-attention runs sliding windows only"
        try:
            import local_attention  # noqa: F401
        except ImportError:
            return "local-attention not installed (pip install --no-deps local-attention einops hyper-connections)"
    if impl == "sdpa_masked" and t > 32768:
        return f"dense {t}x{t} mask: {t * t / 2**30:.0f} GiB as bool plus SDPA's float copy; does not fit in 24 GiB"
    if impl in ("sdpa_masked", "sdpa_causal") and t > max_dense:
        return f"quadratic cost at T={t} exceeds this run's time budget (--max-dense {max_dense})"
    if impl == "flex":
        if backward:
            return "FlexAttention has no backward on CPU in this torch (NotImplementedError)"
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        except ImportError:
            return "FlexAttention not available in this torch"
    return None


def tile_flops(pattern: str, t: int, heads: int, dim: int, block: int, backward: bool) -> float:
    """Matmul FLOPs on the tiles block_sparse keeps (forward 4 T_tile S_tile D; fwd+bwd 3.5x)."""
    tiles = bsmod.plan_for(make_pattern(pattern), t, t, block, block)[0][0].tiles
    fwd = 4.0 * heads * tiles * block * block * dim
    return fwd * 3.5 if backward else fwd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T=4096, window512, forward only")
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--patterns", nargs="+", default=["window256", "window512", "bigbird"], choices=PATTERNS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-dense", type=int, default=16384, help="largest T for the quadratic sdpa columns")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (fresh process per column)")
    p.add_argument("--tag", default=None, help="results file suffix (default: from the arguments)")
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.patterns, args.modes = [4096], ["window512"], ["fwd"]
    heads, dim = 8, 64
    mm = matmul_flops_per_s(torch.float32)
    res = Results("block_sparse", meta={"heads": heads, "head_dim": dim, "dtype": "float32", "batch": 1,
                                        "mm_flops_per_s": mm, "block": bsmod.DEFAULT_BLOCK})
    print(f"torch.mm float32: {mm / 1e9:.1f} GFLOP/s; B=1 H={heads} D={dim}; ratio = column time / block_sparse time")
    for t in args.T:
        for pattern in args.patterns:
            mask = make_pattern(pattern)
            dens = patterns.density(mask, t)
            bdens = patterns.block_density(mask, t, block=bsmod.DEFAULT_BLOCK)
            for mode in args.modes:
                backward = mode == "fwd+bwd"
                case = {"T": t, "pattern": pattern, "mode": mode}
                for impl in args.impls:
                    why = skip_reason(impl, pattern, t, args.max_dense, backward)
                    if why:
                        print(f"  skip {impl} at {case}: {why}")
                        res.add(case, impl, None, note=why, density=dens, block_density=bdens)
                        continue
                    try:
                        step, extra = runner(impl, pattern, t, heads, dim, backward)
                        t0 = time.perf_counter()
                        step()  # first call: compiles flex; warms the others
                        first = time.perf_counter() - t0
                    except Exception as exc:  # a peer failing to run is reported, not fatal
                        why = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
                        print(f"  skip {impl} at {case}: {why}")
                        res.add(case, impl, None, note=why, density=dens, block_density=bdens)
                        torch._dynamo.reset()
                        _COMPILED.clear()
                        continue
                    tm = time_fn(step, warmup=0, repeats=args.repeats, max_seconds=30)
                    if impl == "flex":
                        extra["compile_s"] = max(0.0, first - tm.median)
                    row = {"density": dens, "block_density": bdens, **extra}
                    if impl in ("block_sparse", "flex"):
                        flops = tile_flops(pattern, t, heads, dim, bsmod.DEFAULT_BLOCK, backward)
                        row["mm_fraction_kept_tiles"] = flops / tm.median / mm
                    if args.memory:
                        row["peak_mib"] = peak_extra_mib(impl, pattern, t, backward)
                    res.add(case, impl, tm.median, **row)
                    print(f"  {case} {impl}: {tm.median * 1e3:.1f} ms "
                          + " ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
                    del step
    print()
    print(speedup_table(res))
    tag = args.tag or ("quick" if args.quick else "_".join(str(t) for t in args.T))
    path = res.save(HERE / "results" / f"block_sparse_{tag}.json")
    print(f"\nwrote {path}")
    return 0


def speedup_table(res: Results) -> str:
    """Markdown: per case, block_sparse ms, each column's ms and its ratio to block_sparse."""
    impls = list(dict.fromkeys(r["impl"] for r in res.rows))
    cases: dict[tuple, dict[str, dict]] = {}
    for r in res.rows:
        cases.setdefault((r["T"], r["pattern"], r["mode"]), {})[r["impl"]] = r
    others = [i for i in impls if i != "block_sparse"]
    head = ["T", "pattern", "mode", "density", *[f"{i} ms" for i in impls], *[f"{i}/bs" for i in others]]
    has_mem = any("peak_mib" in r for r in res.rows)
    if has_mem:
        head += [f"{i} MiB" for i in impls]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (t, pat, mode), by in cases.items():
        base = by.get("block_sparse", {}).get("seconds")
        dens = next(iter(by.values())).get("density", math.nan)
        cells = [str(t), pat, mode, f"{dens:.4f}"]
        cells += ["-" if by.get(i, {}).get("seconds") is None else f"{by[i]['seconds'] * 1e3:.1f}" for i in impls]
        for i in others:
            s = by.get(i, {}).get("seconds")
            cells.append("-" if s is None or not base else f"{s / base:.2f}x")
        if has_mem:
            cells += ["-" if by.get(i, {}).get("peak_mib") is None else f"{by[i]['peak_mib']:.0f}" for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
