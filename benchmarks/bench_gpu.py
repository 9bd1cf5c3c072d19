"""GPU benchmark: the Triton implementations against SDPA, FlexAttention and the PyTorch ones, in one run.

Three tables, each written to ``benchmarks/results/gpu_<tag>.json`` as soon as it is done (a run
cut short keeps what it measured):

1. **block-sparse** (bfloat16, H=16, D in {64, 128}, B in {1, 2, 4}, T in {4096 ... 131072}):
   masks ``none``, ``causal``, ``window`` (causal sliding window, ``--window`` keys back) and
   ``bigbird`` (:func:`attnkit.masks.patterns.bigbird`: window + global + random blocks of 128).
   Per (mask, T, D, B) and mode (``fwd``, ``fwd+bwd``) the columns are

   * ``triton_bs``    ``attention(..., impl="triton_block_sparse")``;
   * ``flex``         ``torch.compile(flex_attention)`` with the same tiles
     (``tile_plan(mask, T, T, 128, 128).to_flex()``); its compile time (first call minus the
     median) is reported apart as ``compile_s``;
   * ``sdpa``         ``F.scaled_dot_product_attention``: the flash backend with ``is_causal`` for
     ``none`` / ``causal``; a dense boolean ``T x T`` mask (memory-efficient backend) otherwise,
     skipped where its estimated memory passes ``--max-mem-gb``;
   * ``block_sparse`` attnkit's pure-PyTorch tile implementation (``options={"kernel": "torch"}``).

   Each row has the median time (CUDA events), TFLOP/s on the kept blocks (forward
   ``4 B H D x`` the score elements of the non-empty 128 x 128 tiles; forward + backward 3.5x that,
   the backward counted as 2.5 forwards), that throughput as a fraction of a ``torch.mm`` bfloat16
   8192^3 ceiling measured in the same run, and the peak memory
   (``torch.cuda.max_memory_allocated`` after a reset). ``x/sdpa`` = column time / SDPA time
   (< 1: faster than SDPA).
2. **lsh** (T in {16384, 65536}, D=64): ``triton_lsh`` (sorted copies of the rows, and
   ``triton_lsh_indexed``: ``triton_rows="indexed"``) vs ``lsh`` (PyTorch on the GPU) vs SDPA
   flash (exact), with each LSH output's relative error ``||o - o_exact|| / ||o_exact||`` against
   float32 exact attention of the same inputs (queries near keys of a few clusters, so attention is
   peaked, as LSH assumes); SDPA bfloat16's own error is the floor.
3. **decode** (one query, a 131072-key cache, H=16, D=128, B=1): ``triton_block_sparse`` with
   ``return_weights=True`` vs SDPA (no weights) vs ``reference`` with weights.

A cell that fails (out of memory, unsupported) prints its reason and the run goes on; past
``--budget-s`` the remaining cells are skipped (recorded as such).

Usage::

    python benchmarks/bench_gpu.py --quick                          # ~2-3 min subset on one GPU
    python benchmarks/bench_gpu.py --T 4096 16384 65536 --D 128 --B 1 --budget-s 600
    python benchmarks/bench_gpu.py --tables lsh decode --tag lsh_decode
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --device cpu --smoke   # code paths, tiny sizes
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import attnkit
from attnkit import masks
from attnkit.eval.bench import Results
from attnkit.masks import patterns
from attnkit.masks.base import EMPTY
from attnkit.masks.plan import tile_plan

HERE = Path(__file__).resolve().parent
IMPLS = ["triton_bs", "flex", "sdpa", "block_sparse"]
MASKS = ["none", "causal", "window", "bigbird"]
TABLES = ["block_sparse", "lsh", "decode"]
FLEX_BLOCK = 128


class Skip(Exception):
    """A cell that is not run, with the reason."""


# ------------------------------------------------------------------------------------------------
# timing and memory
# ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, *, target_s: float, max_cell_s: float,
            min_reps: int = 3, max_reps: int = 30) -> dict[str, Any]:
    """First-call time (compiles, builds plans), then the median of timed calls (CUDA events on a
    GPU), as many as fit in ``target_s`` (at least ``min_reps``; one when a call takes longer than
    ``max_cell_s``), and the peak memory of one call beyond what was allocated before it."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    sync(device)
    warm = time.perf_counter() - t0
    reps = 1 if warm > max_cell_s else max(min_reps, min(max_reps, int(target_s / max(warm, 1e-6))))
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    row = {"seconds": statistics.median(times), "first_s": first, "reps": reps}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        row["peak_gib"] = peak / 2**30
        row["peak_extra_gib"] = (peak - base) / 2**30
    return row


def mm_ceiling(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """``torch.mm`` throughput (FLOP/s) for ``n x n`` matrices in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    row = measure(lambda: torch.mm(a, b), device, target_s=1.0, max_cell_s=30, min_reps=5)
    return 2.0 * n**3 / row["seconds"]


def failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}: {(text[0] if text else '')[:200]}"


def cleanup(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# masks and FLOPs
# ------------------------------------------------------------------------------------------------


def attempt(make: Callable[[], Any], label: str, case: dict, impl: str, res, device: torch.device) -> Any:
    """``make()``, or None after printing and recording why the cell did not run (a Skip, or an
    error such as out of memory: reported, not fatal)."""
    try:
        return make()
    except Skip as why:
        note = str(why)
    except Exception as exc:
        note = failure(exc)
        cleanup(device)
    print(f"  skip {label}: {note}")
    res.add(case, impl, None, note=note)
    return None


def make_mask(name: str, window: int, bigbird_block: int) -> masks.Mask | None:
    if name == "none":
        return None
    if name == "causal":
        return masks.causal()
    if name == "window":
        return patterns.sliding_window(window, causal=True)
    if name == "bigbird":
        return patterns.bigbird(bigbird_block, window_blocks=3, global_blocks=2, random_blocks=3)
    raise SystemExit(f"unknown mask {name!r}; choose from {MASKS}")


_KEPT: dict = {}


def kept_elements(mask: masks.Mask | None, t: int, s: int, block: int = FLEX_BLOCK) -> tuple[int, float]:
    """Score elements of the non-empty ``block x block`` tiles (batch 0, head 0) and the exact
    fraction of kept pairs."""
    key = (repr(mask), t, s, block)
    if key not in _KEPT:
        plan = tile_plan(mask, t, s, block, block)
        kinds = plan.kinds[0, 0]
        rows = torch.full((kinds.shape[0],), block, dtype=torch.float64)
        rows[-1] = t - block * (kinds.shape[0] - 1)
        cols = torch.full((kinds.shape[1],), block, dtype=torch.float64)
        cols[-1] = s - block * (kinds.shape[1] - 1)
        kept = int(((kinds != EMPTY).double() * rows[:, None] * cols[None, :]).sum())
        exact = t * s if mask is None else patterns.pair_count(mask, t, s)
        _KEPT[key] = (kept, exact / (t * s))
    return _KEPT[key]


# ------------------------------------------------------------------------------------------------
# the block-sparse table
# ------------------------------------------------------------------------------------------------

_FLEX: dict = {}


def flex_fn(device: torch.device, compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if "fn" not in _FLEX:
        for name in ("recompile_limit", "cache_size_limit"):  # every cell has its own shapes and mask
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_block_mask(mask: masks.Mask | None, t: int, device: torch.device):
    """FlexAttention's block mask with attnkit's tiles (``tile_plan(...).to_flex()``); a block
    layout (BigBird) gets a ``mask_mod`` that reads its layout on ``device`` (the compiled kernel
    cannot read a CPU tensor)."""
    plan = tile_plan(mask, t, t, FLEX_BLOCK, FLEX_BLOCK, device=device)
    if not hasattr(mask, "layout"):
        return plan.to_flex()
    from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

    layout, blk = mask.layout(t, t).to(device), mask.block

    def mask_mod(b, h, q_idx, kv_idx):
        return layout[q_idx // blk, kv_idx // blk]

    return FlexBlockMask.from_kv_blocks(
        plan.partial_kv_num.contiguous(), plan.partial_kv_indices.contiguous(), plan.full_kv_num.contiguous(),
        plan.full_kv_indices.contiguous(), BLOCK_SIZE=(FLEX_BLOCK, FLEX_BLOCK), mask_mod=mask_mod,
        seq_lengths=(t, t))


def sdpa_dense_bytes(b: int, h: int, t: int, d: int) -> float:
    """Estimated bytes of SDPA with a dense boolean mask: the mask, its bf16 bias copy and the
    inputs, outputs and gradients."""
    return 3.0 * t * t + 8.0 * b * h * t * d * 2


def block_sparse_cell(impl: str, mask_name: str, mask, q, k, v, go, backward: bool, args,
                      device: torch.device) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The step to time for one column, and its one-off costs / notes."""
    b, h, t, d = q.shape
    extra: dict[str, Any] = {}
    if impl == "triton_bs":
        if "triton_block_sparse" not in attnkit.list_impls():
            raise Skip("triton_block_sparse is not registered")
        opts = args.triton_options
        why = attnkit.explain_dispatch(q, k, v, mask, impl="triton_block_sparse",
                                       options=opts).reasons["triton_block_sparse"]
        if why:
            raise Skip("triton_block_sparse refuses: " + "; ".join(why))
        fn = lambda: attnkit.attention(q, k, v, mask, impl="triton_block_sparse", options=opts)  # noqa: E731
        if opts:
            extra["note"] = "options " + json.dumps(opts)
    elif impl == "block_sparse":
        fn = lambda: attnkit.attention(q, k, v, mask, impl="block_sparse", options={"kernel": "torch"})  # noqa: E731
    elif impl == "flex":
        compiled = device.type == "cuda"
        if not compiled and t > 2048:
            raise Skip("eager FlexAttention (no compile off CUDA) materialises T x S scores")
        t0 = time.perf_counter()
        bm = flex_block_mask(mask, t, device)
        sync(device)
        extra["block_mask_s"] = time.perf_counter() - t0
        extra["note"] = "torch.compile(flex_attention)" if compiled else "eager flex_attention (CPU smoke)"
        flex = flex_fn(device, compiled)
        fn = lambda: flex(q, k, v, block_mask=bm)  # noqa: E731
    elif impl == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if mask_name in ("none", "causal"):
            backends = [SDPBackend.FLASH_ATTENTION] if device.type == "cuda" else None
            causal = mask_name == "causal"
            extra["note"] = f"flash, is_causal={causal}" if backends else f"default backend, is_causal={causal}"

            def fn():
                if backends is None:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                with sdpa_kernel(backends):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            need = sdpa_dense_bytes(b, h, t, d)
            if need > args.max_mem_gb * 1e9:
                raise Skip(f"dense {t}x{t} bool mask: ~{need / 1e9:.0f} GB estimated > --max-mem-gb {args.max_mem_gb}")
            est = 4.0 * b * h * d * t * t * (3.5 if backward else 1.0) / (0.3 * args.mm_flops)
            if est > args.max_cell_s:
                raise Skip(f"dense masked attention estimated {est:.0f} s per call > --max-cell-s {args.max_cell_s}")
            dense = mask.dense(t, t).to(device)
            extra["note"] = "dense bool mask, memory-efficient backend" if device.type == "cuda" else "dense bool mask"
            backends = [SDPBackend.EFFICIENT_ATTENTION] if device.type == "cuda" else None

            def fn():
                if backends is None:
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
                with sdpa_kernel(backends):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    else:
        raise SystemExit(f"unknown impl {impl!r}")

    if not backward:
        def step():
            with torch.no_grad():
                return fn()
    else:
        def step():
            out = fn()
            return torch.autograd.grad(out, (q, k, v), go)
    return step, extra


def measured_block_cell(impl: str, mask_name: str, mask, q, k, v, go, backward: bool, args,
                        device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """One column of the block-sparse table: its timing row and its one-off costs / notes."""
    step, extra = block_sparse_cell(impl, mask_name, mask, q, k, v, go, backward, args, device)
    return measure(step, device, target_s=args.target_s, max_cell_s=args.max_cell_s), extra


def run_block_sparse(args, res: Results, device: torch.device, clock: Callable[[], bool]) -> None:
    dtype, h = args.dtype, args.heads
    for d in args.D:
        for b in args.B:
            for t in args.T:
                g = torch.Generator(device=device).manual_seed(0)
                try:
                    q, k, v, go = (torch.randn(b, h, t, d, generator=g, device=device, dtype=dtype) for _ in range(4))
                except torch.OutOfMemoryError as exc:
                    print(f"  inputs B={b} T={t} D={d}: {failure(exc)}")
                    cleanup(device)
                    continue
                for mask_name in args.masks:
                    mask = make_mask(mask_name, args.window, args.bigbird_block)
                    kept, density = kept_elements(mask, t, t)
                    for mode in args.modes:
                        backward = mode == "fwd+bwd"
                        for x in (q, k, v):
                            x.requires_grad_(backward)
                        case = {"table": "block_sparse", "mask": mask_name, "T": t, "D": d, "B": b, "H": h,
                                "mode": mode, "density": density, "kept_block_elements": kept}
                        flops = 4.0 * b * h * d * kept * (3.5 if backward else 1.0)
                        for impl in args.impls:
                            label = f"{mask_name} T={t} D={d} B={b} {mode} {impl}"
                            if not clock():
                                res.add(case, impl, None, note="skipped: --budget-s reached")
                                continue
                            got = attempt(functools.partial(measured_block_cell, impl, mask_name, mask, q, k, v, go,
                                                            backward, args, device), label, case, impl, res, device)
                            if got is None:
                                continue
                            row, extra = got
                            if impl == "flex":
                                row["compile_s"] = max(0.0, row["first_s"] - row["seconds"])
                            row["tflops"] = flops / row["seconds"] / 1e12
                            row["mm_fraction"] = flops / row["seconds"] / args.mm_flops
                            row.update(extra)
                            res.add(case, impl, row.pop("seconds"), **row)
                            mem = f" peak {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""
                            comp = f" compile {row['compile_s']:.1f} s" if "compile_s" in row else ""
                            print(f"  {label}: {res.rows[-1]['seconds'] * 1e3:.2f} ms {row['tflops']:.1f} TFLOP/s "
                                  f"({row['mm_fraction']:.0%} of mm){mem}{comp}", flush=True)
                            cleanup(device)
                del q, k, v, go
                cleanup(device)


# ------------------------------------------------------------------------------------------------
# the LSH table
# ------------------------------------------------------------------------------------------------


def clustered_inputs(b: int, h: int, t: int, d: int, device: torch.device,
                     dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Keys around ``T / 16`` centres per head, each query near a randomly chosen key (peaked
    attention, the case LSH is meant for: the largest weight of a row averages ~0.9), values random."""
    g = torch.Generator(device=device).manual_seed(1)
    clusters = max(16, t // 16)
    centres = 2.0 * torch.randn(b, h, clusters, d, generator=g, device=device)
    pick = torch.randint(clusters, (b, h, t), generator=g, device=device)
    k = torch.gather(centres, 2, pick[..., None].expand(b, h, t, d))
    k = k + torch.randn(b, h, t, d, generator=g, device=device)
    src = torch.randint(t, (b, h, t), generator=g, device=device)
    q = torch.gather(k, 2, src[..., None].expand(b, h, t, d)) + 0.3 * torch.randn(b, h, t, d, generator=g,
                                                                                  device=device)
    v = torch.randn(b, h, t, d, generator=g, device=device)
    go = torch.randn(b, h, t, d, generator=g, device=device)
    return tuple(x.to(dtype) for x in (q, k, v, go))


def rel_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    out, exact = out.detach().float(), exact.detach().float()
    return float((out - exact).norm() / exact.norm())


def lsh_cell(impl: str, q, k, v, go, mask, opts: dict, backward: bool, exact: torch.Tensor, args,
             device: torch.device) -> dict[str, Any]:
    """Time one column of the LSH table; its output's relative error against ``exact``."""
    causal = mask is not None
    if impl == "sdpa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    else:
        if impl == "triton_lsh_indexed":  # the kernels read the rows through the sort order
            impl, opts = "triton_lsh", {**opts, "triton_rows": "indexed"}
        if impl not in attnkit.list_impls():
            raise Skip(f"{impl} is not registered")
        if impl == "lsh":  # the pure-PyTorch rounds (kernel="auto" takes the Triton route on CUDA)
            opts = {**opts, "kernel": "torch"}
        why = attnkit.explain_dispatch(q, k, v, mask, impl=impl, options=opts).reasons[impl]
        if why:
            raise Skip(f"{impl} refuses: " + "; ".join(why))
        fn = lambda: attnkit.attention(q, k, v, mask, impl=impl, options=opts)  # noqa: E731
    with torch.no_grad():
        err = rel_error(fn(), exact)
    if backward:
        step = lambda: torch.autograd.grad(fn(), (q, k, v), go)  # noqa: E731
    else:
        def step():
            with torch.no_grad():
                return fn()
    row = measure(step, device, target_s=args.target_s, max_cell_s=args.max_cell_s)
    row["rel_error_vs_exact_fp32"] = err
    return row


def run_lsh(args, res: Results, device: torch.device, clock: Callable[[], bool]) -> None:
    b, h, d, dtype = 1, args.heads, args.lsh_D, args.dtype
    opts = {"bucket_size": args.bucket_size, "n_hashes": args.n_hashes, "seed": 0}
    for t in args.lsh_T:
        try:
            q, k, v, go = clustered_inputs(b, h, t, d, device, dtype)
        except torch.OutOfMemoryError as exc:
            print(f"  lsh inputs T={t}: {failure(exc)}")
            continue
        for mask_name in args.lsh_masks:
            causal = mask_name == "causal"
            mask = masks.causal() if causal else None
            with torch.no_grad():  # float32 exact attention (memory-efficient SDPA: O(T) memory)
                exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
            for mode in args.modes:
                backward = mode == "fwd+bwd"
                for x in (q, k, v):
                    x.requires_grad_(backward)
                case = {"table": "lsh", "mask": mask_name, "T": t, "D": d, "B": b, "H": h, "mode": mode, **opts}
                for impl in ("triton_lsh", "triton_lsh_indexed", "lsh", "sdpa"):
                    label = f"lsh {mask_name} T={t} {mode} {impl}"
                    if not clock():
                        res.add(case, impl, None, note="skipped: --budget-s reached")
                        continue
                    row = attempt(functools.partial(lsh_cell, impl, q, k, v, go, mask, opts, backward, exact, args,
                                                    device), label, case, impl, res, device)
                    if row is None:
                        continue
                    res.add(case, impl, row.pop("seconds"), **row)
                    mem = f" peak {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""
                    print(f"  {label}: {res.rows[-1]['seconds'] * 1e3:.2f} ms rel err "
                          f"{row['rel_error_vs_exact_fp32']:.4f}{mem}", flush=True)
                    cleanup(device)
        del q, k, v, go
        cleanup(device)


# ------------------------------------------------------------------------------------------------
# the decode table
# ------------------------------------------------------------------------------------------------


def decode_cell(name: str, fn: Callable[[], Any], q, k, v, want_out, want_w, args,
                device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """One column of the decode table: its timing row and its errors against float64."""
    if name.startswith("triton"):
        if "triton_block_sparse" not in attnkit.list_impls():
            raise Skip("triton_block_sparse is not registered")
        report = attnkit.explain_dispatch(q, k, v, impl="triton_block_sparse", return_weights=True)
        if report.reasons["triton_block_sparse"]:
            raise Skip("triton_block_sparse refuses: " + "; ".join(report.reasons["triton_block_sparse"]))
    got = fn()
    out, w = got if isinstance(got, tuple) else (got, None)
    extra = {"out_max_err": float((out.double() - want_out).abs().max())}
    if w is not None:
        extra["weights_max_err"] = float((w.double() - want_w).abs().max())
    return measure(fn, device, target_s=args.target_s, max_cell_s=args.max_cell_s), extra


def run_decode(args, res: Results, device: torch.device, clock: Callable[[], bool]) -> None:
    b, h, d, s, dtype = 1, args.heads, 128, args.decode_S, args.dtype
    g = torch.Generator(device=device).manual_seed(2)
    q = torch.randn(b, h, 1, d, generator=g, device=device, dtype=dtype)
    k, v = (torch.randn(b, h, s, d, generator=g, device=device, dtype=dtype) for _ in range(2))
    case = {"table": "decode", "T": 1, "S": s, "D": d, "B": b, "H": h, "mode": "fwd"}
    cols = {
        "triton_bs+weights": lambda: attnkit.attention(q, k, v, impl="triton_block_sparse", return_weights=True),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "reference+weights": lambda: attnkit.attention(q, k, v, impl="reference", return_weights=True),
    }
    with torch.no_grad():
        want_out, want_w = attnkit.attention(q.double(), k.double(), v.double(), impl="reference",
                                             return_weights=True)
        for name, fn in cols.items():
            label = f"decode S={s} {name}"
            if not clock():
                res.add(case, name, None, note="skipped: --budget-s reached")
                continue
            got = attempt(functools.partial(decode_cell, name, fn, q, k, v, want_out, want_w, args, device), label,
                          case, name, res, device)
            if got is None:
                continue
            row, extra = got
            row.update(extra)
            res.add(case, name, row.pop("seconds"), **row)
            mem = f" peak {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""
            print(f"  {label}: {res.rows[-1]['seconds'] * 1e6:.1f} us out err {extra['out_max_err']:.2g}{mem}",
                  flush=True)
    cleanup(device)


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


def markdown(res: Results, table: str, keys: list[str], baseline: str) -> str:
    """Per case: each column's ms, ``column / baseline`` time ratio, TFLOP/s (and mm fraction) and
    peak GiB where measured."""
    rows = [r for r in res.rows if r.get("table") == table]
    if not rows:
        return ""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    cases: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cases.setdefault(tuple(r[k] for k in keys), {})[r["impl"]] = r
    extra = [("tflops", "TF/s", "{:.1f}"), ("mm_fraction", "mm", "{:.0%}"), ("peak_gib", "GiB", "{:.2f}"),
             ("rel_error_vs_exact_fp32", "err", "{:.4f}"), ("compile_s", "compile s", "{:.1f}")]
    extra = [e for e in extra if any(e[0] in r for r in rows)]
    head = [*keys, *[f"{i} ms" for i in impls], *[f"{i}/{baseline}" for i in impls if i != baseline]]
    head += [f"{i} {name}" for key, name, _ in extra for i in impls if any(key in r for r in rows if r["impl"] == i)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by in cases.items():
        base = by.get(baseline, {}).get("seconds")
        cells = [str(x) for x in key]
        cells += ["-" if by.get(i, {}).get("seconds") is None else f"{by[i]['seconds'] * 1e3:.3f}" for i in impls]
        cells += ["-" if by.get(i, {}).get("seconds") is None or not base else f"{by[i]['seconds'] / base:.2f}x"
                  for i in impls if i != baseline]
        for k, _, fmt in extra:
            for i in impls:
                if any(k in r for r in rows if r["impl"] == i):
                    val = by.get(i, {}).get(k)
                    cells.append("-" if val is None else fmt.format(val))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                            "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=p.total_memory / 2**30,
                    multiprocessors=p.multi_processor_count)
    else:
        info.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="a 2-3 minute subset (T=16384, D=128, B=1)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the code paths (e.g. on a CPU)")
    p.add_argument("--tables", nargs="+", default=TABLES, choices=TABLES)
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    p.add_argument("--D", type=int, nargs="+", default=[64, 128])
    p.add_argument("--B", type=int, nargs="+", default=[1])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--masks", nargs="+", default=MASKS, choices=MASKS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    p.add_argument("--window", type=int, default=1024, help="keys back of the sliding window mask")
    p.add_argument("--bigbird-block", type=int, default=128)
    p.add_argument("--lsh-T", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--lsh-D", type=int, default=64)
    p.add_argument("--lsh-masks", nargs="+", default=["none", "causal"], choices=["none", "causal"])
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--decode-S", type=int, default=131072)
    p.add_argument("--mm-n", type=int, default=8192, help="size of the torch.mm ceiling")
    p.add_argument("--max-mem-gb", type=float, default=60.0, help="skip dense-mask SDPA estimated above this")
    p.add_argument("--max-cell-s", type=float, default=20.0, help="one timed call when a call takes longer")
    p.add_argument("--target-s", type=float, default=1.0, help="seconds of timed calls per cell")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip the remaining cells after this")
    p.add_argument("--tag", default=None, help="results file suffix (default: quick / smoke / full)")
    p.add_argument("--triton-options", default="{}",
                   help="options of triton_block_sparse: a JSON object, or the path of a JSON file holding one")
    args = p.parse_args(argv)
    text = args.triton_options
    args.triton_options = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    if args.quick:
        args.T, args.D, args.B, args.masks = [16384], [128], [1], ["causal", "window", "bigbird"]
        args.lsh_T, args.lsh_masks, args.target_s = [16384], ["causal"], 0.5
    if args.smoke:
        args.T, args.D, args.B, args.heads, args.window, args.bigbird_block = [512], [32], [1], 2, 128, 64
        args.lsh_T, args.lsh_D, args.bucket_size, args.n_hashes, args.decode_S = [512], 32, 32, 2, 4096
        args.mm_n, args.target_s = 512, 0.2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available (use --device cpu --smoke to check the code paths)")
    args.dtype = torch.bfloat16
    start = time.perf_counter()
    deadline = start + args.budget_s
    clock = lambda: time.perf_counter() < deadline  # noqa: E731

    info = device_info(device)
    args.mm_flops = mm_ceiling(device, args.mm_n, args.dtype)
    print(f"{info}\ntorch.mm bfloat16 {args.mm_n}^3: {args.mm_flops / 1e12:.2f} TFLOP/s", flush=True)
    meta = {"info": info, "mm_flops_per_s": args.mm_flops, "mm_n": args.mm_n, "dtype": "bfloat16",
            "argv": sys.argv[1:] if argv is None else argv, "flex_block": FLEX_BLOCK,
            "flops": "forward 4 B H D x kept-block score elements; fwd+bwd 3.5x",
            **{k: v for k, v in vars(args).items() if k not in ("dtype", "mm_flops")}}
    res = Results("gpu", meta=meta)
    tag = args.tag or ("smoke" if args.smoke else "quick" if args.quick else "full")
    path = HERE / "results" / f"gpu_{tag}.json"
    runners = {"block_sparse": (run_block_sparse, ["mask", "T", "D", "B", "mode"], "sdpa"),
               "lsh": (run_lsh, ["mask", "T", "mode"], "sdpa"),
               "decode": (run_decode, ["S"], "sdpa")}
    for table in args.tables:
        fn, keys, baseline = runners[table]
        t0 = time.perf_counter()
        print(f"\n== {table} ==", flush=True)
        try:
            fn(args, res, device, clock)
        except Exception as exc:  # a table that breaks must not lose the others
            print(f"  table {table} stopped: {failure(exc)}")
            res.meta.setdefault("table_errors", {})[table] = failure(exc)
        elapsed = time.perf_counter() - t0
        res.meta.setdefault("table_seconds", {})[table] = elapsed
        res.save(path)
        print(f"-- {table}: {elapsed:.1f} s (total {time.perf_counter() - start:.1f} s); wrote {path}\n")
        print(markdown(res, table, keys, baseline), flush=True)
    print(f"\ndone in {time.perf_counter() - start:.1f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
