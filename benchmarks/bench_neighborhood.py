"""Neighbourhood attention benchmark: one ViT encoder layer (and its attention call alone), forward +
backward, with global attention against 2-D neighbourhood attention as the token count grows.

Columns (float32, CPU):

* ``global_sdpa``           global attention, ``impl="sdpa"`` (PyTorch's fused kernel, no mask);
* ``nbhd_block_sparse``     ``masks.neighborhood_2d(g, g, r, extra_tokens=1)`` (the class token
  global) through ``impl="block_sparse"``: only the tiles the analytic classification keeps;
* ``nbhd_blockwise``        the same mask through ``impl="blockwise"`` (skips empty tiles too);
* ``nbhd_sdpa_dense``       the same mask as a dense boolean mask to ``impl="sdpa"`` (no skipping:
  what the mask costs without a tile plan).

Canvases ``C x C`` pixels in ``P x P`` patches give ``g = C / P`` patches a side and
``T = g^2 + 1`` tokens (28 / 4 -> 50, 128 / 4 -> 1,025, 256 / 4 -> 4,097). The layer is
``attnkit.nn.TransformerEncoderLayer(d_model, heads, ff, norm_first=True, activation="gelu")``,
the ViT's own. ``--memory`` also measures the peak extra resident memory of one forward + backward
of the layer in a fresh process. Ratios are column time / ``global_sdpa`` time (< 1: faster).

Usage::

    python benchmarks/bench_neighborhood.py --quick                  # 28 and 128 canvases (~1 min)
    python benchmarks/bench_neighborhood.py --canvas 28 128 256 --memory --tag 4k

Each run writes ``benchmarks/results/neighborhood_<tag>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import attnkit
from attnkit import masks
from attnkit.eval.bench import Results, peak_memory, time_fn
from attnkit.masks.base import DEFAULT_BLOCK
from attnkit.masks.plan import tile_plan
from attnkit.nn import TransformerEncoderLayer

HERE = Path(__file__).resolve().parent
COLUMNS = ["global_sdpa", "nbhd_block_sparse", "nbhd_blockwise", "nbhd_sdpa_dense"]
BLOCK = DEFAULT_BLOCK


def column(name: str, grid: int, radius: int) -> tuple[str, masks.Mask | None]:
    """``(impl, mask)`` of a column (block_sparse and blockwise use their default 64-wide key tiles)."""
    if name == "global_sdpa":
        return "sdpa", None
    t = grid * grid + 1
    mask = masks.neighborhood_2d(grid, grid, radius, extra_tokens=1)
    if name == "nbhd_sdpa_dense":
        return "sdpa", masks.from_tensor(mask.dense(t, t))  # built once, outside the timing
    return name.removeprefix("nbhd_"), mask


def layer_step(name: str, grid: int, radius: int, batch: int, d_model: int, heads: int, seed: int = 0):
    """A zero-argument callable running one forward + backward of the layer."""
    impl, mask = column(name, grid, radius)
    torch.manual_seed(seed)
    layer = TransformerEncoderLayer(d_model, heads, 2 * d_model, 0.0, activation="gelu", norm_first=True, impl=impl)
    x = torch.randn(batch, grid * grid + 1, d_model, requires_grad=True)  # (B, T, E)

    def run() -> None:
        layer(x, mask=mask).square().mean().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None

    return run


def attention_step(name: str, grid: int, radius: int, batch: int, d_model: int, heads: int, seed: int = 0):
    """A zero-argument callable running one forward + backward of the attention call alone."""
    impl, mask = column(name, grid, radius)
    t = grid * grid + 1
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, t, d_model // heads, generator=g, requires_grad=True) for _ in range(3))

    def run() -> None:
        out = attnkit.attention(q, k, v, mask, impl=impl)
        out.square().mean().backward()
        for x in (q, k, v):
            x.grad = None

    return run


def probe(name: str, grid: int, radius: int, batch: int, d_model: int, heads: int):
    """For :func:`peak_memory`: the layer step, warmed up once."""
    torch.set_num_threads(1)
    fn = layer_step(name, grid, radius, batch, d_model, heads)
    fn()
    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--canvas", type=int, nargs="+", default=[28, 128, 256], help="canvas sides in pixels")
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--radius", type=int, nargs="+", default=[1, 3], help="neighbourhood radii in patches")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--columns", nargs="+", default=COLUMNS, choices=COLUMNS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="peak extra memory of the layer step (fresh processes)")
    p.add_argument("--quick", action="store_true", help="canvases 28 and 128 only")
    p.add_argument("--tag", default=None, help="results file suffix (default: the largest token count)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    canvases = [28, 128] if args.quick else args.canvas
    res = Results("neighborhood", meta={"args": vars(args), "block": BLOCK,
                                        "note": "measured on a shared, loaded machine: compare columns of one run"})
    for canvas in canvases:
        grid = canvas // args.patch
        t = grid * grid + 1
        for radius in args.radius:
            kinds = tile_plan(masks.neighborhood_2d(grid, grid, radius, extra_tokens=1), t, t, BLOCK).counts()
            density = (kinds["full"] + kinds["partial"]) / sum(kinds.values())
            case = {"canvas": canvas, "tokens": t, "radius": radius, "tile_density": round(density, 4)}
            for name in args.columns:
                if name == "global_sdpa" and radius != args.radius[0]:
                    continue  # the same for every radius
                row = dict(case, radius=radius if name != "global_sdpa" else "-")
                for what, make in (("layer", layer_step), ("attention", attention_step)):
                    fn = make(name, grid, radius, args.batch, args.d_model, args.heads)
                    timing = time_fn(fn, warmup=1, repeats=args.repeats, max_seconds=60)
                    extra = {}
                    if args.memory and what == "layer":
                        mem = peak_memory("bench_neighborhood:probe", {"name": name, "grid": grid, "radius": radius,
                                                                       "batch": args.batch, "d_model": args.d_model,
                                                                       "heads": args.heads}, extra_path=[HERE])
                        extra["peak_extra_mib"] = None if mem is None else round(mem["peak_extra_mib"], 1)
                    res.add({**row, "part": what}, name, timing.median, best=timing.min, **extra)
                    print(f"canvas {canvas} T={t} r={radius} {what:9s} {name:18s} {timing.median * 1e3:9.1f} ms"
                          + (f"  peak +{extra['peak_extra_mib']} MiB" if extra.get("peak_extra_mib") else ""),
                          flush=True)
    tag = args.tag or f"{max(c // args.patch for c in canvases) ** 2 + 1}"
    path = res.save(HERE / "results" / f"neighborhood_{tag}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
