"""Native kernel benchmark: ``impl="native"`` against its peers, measured in one run.

Columns (B=1, H=8, D=64): ``native`` (the C++ kernel), ``block_sparse`` and ``blockwise`` (the
pure-PyTorch tile implementations, run with ``options={"kernel": "torch"}``), ``sdpa`` (attnkit's
sdpa: the fused kernel for no mask and causal, a dense boolean mask otherwise) and ``flex``
(``torch.compile``d FlexAttention with ``create_block_mask``; forward only, its compile time
reported apart as ``compile_s``).
Masks: ``none``, ``causal``, ``window256`` / ``window512`` (causal sliding windows), ``bigbird``
(BigBird defaults) and ``dense`` (a random boolean mask, density 0.5). The native kernel's build
happens before the first measurement (its time is printed).

``--mod alibi`` / ``--mod softcap`` adds that score modifier (ALiBi with the paper's slopes,
soft-cap 30) to ``native``, ``block_sparse`` and ``blockwise``; ``sdpa`` then gets a dense
``(1, H, T, S)`` float bias (the ALiBi bias, built before timing) as the cost of the dense-bias
route, since it cannot soft-cap; ``flex`` is skipped.

Every row records ``mm_fraction``: FLOPs on the kept tiles (forward 4 H tiles bq bk D; forward +
backward 3.5x that) over the row's time, as a fraction of ``torch.mm``'s float32 throughput
measured in the same run. Ratios are column time / native time (> 1: native is faster).

Usage::

    python benchmarks/bench_native.py --quick                      # T=4096, three masks, forward
    python benchmarks/bench_native.py --T 16384 --masks window256 window512 bigbird --tag 16k
    python benchmarks/bench_native.py --T 4096 --masks causal --dtypes float32 --mod alibi --tag 4k_alibi

Each run writes ``benchmarks/results/native_<tag>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import attnkit
from attnkit import kernels, masks, scores
from attnkit.eval.bench import Results, matmul_flops_per_s, time_fn
from attnkit.kernels.tiles import native_plan
from attnkit.masks import patterns
from attnkit.masks.base import DEFAULT_BLOCK
from attnkit.masks.plan import tile_plan

HERE = Path(__file__).resolve().parent
IMPLS = ["native", "block_sparse", "blockwise", "sdpa", "flex"]
MASKS = ["none", "causal", "window256", "window512", "bigbird", "dense"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODS = ["none", "alibi", "softcap"]


def make_mods(name: str, heads: int) -> list:
    """The score modifiers of ``--mod``."""
    return {"none": [], "alibi": [scores.alibi(heads)], "softcap": [scores.softcap(30.0)]}[name]


def make_mask(name: str, t: int):
    """The attnkit mask of a benchmark case (None: no mask)."""
    if name == "none":
        return None
    if name == "causal":
        return masks.causal()
    if name.startswith("window"):
        return patterns.sliding_window(int(name[len("window"):]), causal=True)
    if name == "bigbird":
        return patterns.bigbird(64)
    if name == "dense":
        return masks.from_tensor(torch.rand(t, t, generator=torch.Generator().manual_seed(0)) < 0.5)
    raise SystemExit(f"unknown mask {name!r}; choose from {MASKS}")


def kept_flops(mask, t: int, heads: int, dim: int, backward: bool) -> float:
    tiles = native_plan(tile_plan(mask, t, t)).tiles
    fwd = 4.0 * heads * tiles * DEFAULT_BLOCK * DEFAULT_BLOCK * dim
    return fwd * 3.5 if backward else fwd


_COMPILED: dict = {}


def runner(impl: str, mask, t: int, heads: int, dim: int, dtype: torch.dtype, backward: bool, mod: str = "none"):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, t, dim, generator=g).to(dtype).requires_grad_(backward) for _ in range(3))
    extra: dict = {}
    kw: dict = {}
    if mod != "none" and impl == "sdpa":  # the dense-bias route
        kw["bias"] = scores.alibi(heads).as_bias(1, heads, t, t, dtype=dtype, device=q.device)
    elif mod != "none":
        kw["score_mods"] = make_mods(mod, heads)
    if impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        torch._dynamo.reset()
        t0 = time.perf_counter()
        mm = None if mask is None else mask.mask_mod(t, t)
        bm = None if mm is None else create_block_mask(mm, B=None, H=None, Q_LEN=t, KV_LEN=t, device="cpu")
        extra["block_mask_s"] = time.perf_counter() - t0
        compiled = torch.compile(flex_attention)
        fn = lambda: compiled(q, k, v, block_mask=bm)  # noqa: E731
    else:
        opts = {"kernel": "torch"} if impl in ("block_sparse", "blockwise") else None  # their pure-PyTorch path
        fn = lambda: attnkit.attention(q, k, v, mask, impl=impl, options=opts, **kw)  # noqa: E731

    def step():
        out = fn()
        if backward:
            out.float().sum().backward()
            for x in (q, k, v):
                x.grad = None
        return out

    return step, extra


def skip_reason(impl: str, mask_name: str, t: int, backward: bool, max_dense: int, mod: str = "none") -> str | None:
    if impl == "flex" and mod != "none":
        return "score modifiers are measured against the attnkit implementations only"
    if impl == "flex" and backward:
        return "FlexAttention has no backward on CPU in this torch"
    if impl == "sdpa" and mask_name not in ("none", "causal") and t > max_dense:
        return f"dense {t}x{t} mask past --max-dense {max_dense}"
    if impl in ("block_sparse", "blockwise") and t > max_dense and mask_name in ("none", "causal", "dense"):
        return f"quadratic pure-PyTorch tiles past --max-dense {max_dense} (time budget)"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T=4096, none/causal/window512, forward, float32")
    p.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--masks", nargs="+", default=MASKS, choices=MASKS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-dense", type=int, default=4096, help="largest T for quadratic masked columns")
    p.add_argument("--mod", default="none", choices=MODS, help="score modifier (see the module docstring)")
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.masks, args.modes, args.dtypes = [4096], ["none", "causal", "window512"], ["fwd"], ["float32"]
    heads, dim = 8, 64
    t0 = time.perf_counter()
    kernels.native_module()
    print(f"native kernel ready in {time.perf_counter() - t0:.1f} s (build or cache load)")
    mm = matmul_flops_per_s(torch.float32)
    res = Results("native", meta={"heads": heads, "head_dim": dim, "batch": 1, "mm_flops_per_s": mm,
                                  "threads": torch.get_num_threads(), "block": DEFAULT_BLOCK, "mod": args.mod})
    print(f"torch.mm float32: {mm / 1e9:.1f} GFLOP/s; threads {torch.get_num_threads()}")
    for t in args.T:
        for mask_name in args.masks:
            mask = make_mask(mask_name, t)
            for dname in args.dtypes:
                for mode in args.modes:
                    backward = mode == "fwd+bwd"
                    case = {"T": t, "mask": mask_name, "dtype": dname, "mode": mode, "mod": args.mod}
                    flops = kept_flops(mask, t, heads, dim, backward)
                    for impl in args.impls:
                        why = skip_reason(impl, mask_name, t, backward, args.max_dense, args.mod)
                        if why:
                            res.add(case, impl, None, note=why)
                            continue
                        try:
                            step, extra = runner(impl, mask, t, heads, dim, DTYPES[dname], backward, args.mod)
                            t1 = time.perf_counter()
                            step()
                            first = time.perf_counter() - t1
                        except Exception as exc:  # a peer that fails is reported, not fatal
                            why = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
                            print(f"  skip {impl} {case}: {why}")
                            res.add(case, impl, None, note=why)
                            continue
                        tm = time_fn(step, warmup=0, repeats=args.repeats, max_seconds=30)
                        if impl == "flex":
                            extra["compile_s"] = max(0.0, first - tm.median)
                        row = {"mm_fraction": flops / tm.median / mm, **extra}
                        res.add(case, impl, tm.median, **row)
                        print(f"  {case} {impl}: {tm.median * 1e3:.1f} ms mm_fraction={row['mm_fraction']:.2f}",
                              flush=True)
                        del step
    print()
    print(ratio_table(res))
    tag = args.tag or ("quick" if args.quick else "_".join(str(t) for t in args.T))
    path = res.save(HERE / "results" / f"native_{tag}.json")
    print(f"\nwrote {path}")
    return 0


def ratio_table(res: Results) -> str:
    """Markdown: per case, native ms and mm fraction, each column's ms and its ratio to native."""
    impls = list(dict.fromkeys(r["impl"] for r in res.rows))
    others = [i for i in impls if i != "native"]
    cases: dict[tuple, dict[str, dict]] = {}
    for r in res.rows:
        cases.setdefault((r["T"], r["mask"], r["dtype"], r["mode"]), {})[r["impl"]] = r
    head = ["T", "mask", "dtype", "mode", "native ms", "native mm frac", *[f"{i} ms" for i in others],
            *[f"{i}/native" for i in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by in cases.items():
        base = by.get("native", {}).get("seconds")
        cells = [str(x) for x in key]
        cells += [f"{base * 1e3:.1f}" if base else "-",
                  f"{by['native']['mm_fraction']:.2f}" if base else "-"]
        cells += [f"{by[i]['seconds'] * 1e3:.1f}" if by.get(i, {}).get("seconds") else "-" for i in others]
        cells += [f"{by[i]['seconds'] / base:.2f}" if base and by.get(i, {}).get("seconds") else "-" for i in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
