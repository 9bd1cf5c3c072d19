"""Pictures of attention masks and sparse patterns (matplotlib, imported only when drawing).

>>> from attnkit.masks import patterns
>>> from attnkit.masks.plot import mask_image
>>> mask_image(patterns.sliding_window(1), 4).tolist()
[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]

In a notebook: ``plot_mask(patterns.bigbird(64), 4096)``; from the shell:
``attnkit masks show bigbird --T 4096 --out bigbird.png``. Large sizes are drawn at most
``max_pixels`` cells a side, each cell shaded by the fraction of its pairs that are kept
(computed tile by tile, never as a ``T x S`` buffer). Black is attend, white masked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import patterns
from .base import EMPTY, FULL, PARTIAL, Mask

__all__ = ["mask_image", "plot_mask", "save_mask"]

_BUDGET = 1 << 24  # element checks per chunk of partial cells
_SAMPLE_SIDE = 64  # partial cells larger than this a side are estimated from SIDE x SIDE samples


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("drawing masks needs matplotlib: pip install 'attnkit[viz]' (or matplotlib)") from exc
    return plt


def _cell_fractions(bm, idx: Tensor, cell: int, rows: Tensor, cols: Tensor, gen: torch.Generator) -> Tensor:
    """Kept fraction of the partial cells ``idx (n, 2)``: exact when a cell holds at most
    ``_SAMPLE_SIDE ** 2`` pairs, else estimated on a jittered ``_SAMPLE_SIDE x _SAMPLE_SIDE``
    grid of its pairs (stratified, so periodic patterns do not alias)."""
    n_rows, n_cols = rows[idx[:, 0], 0], cols[0, idx[:, 1]]  # (n,) in-range sizes of each cell
    if cell <= _SAMPLE_SIDE:
        tiles = torch.cat([torch.zeros(len(idx), 2, dtype=torch.int64), idx], 1)
        kept = bm.tile_mask(tiles).flatten(1).sum(-1).float()  # (n,)
        return kept / (n_rows * n_cols).float()
    grid = torch.arange(_SAMPLE_SIDE, dtype=torch.float64)
    shape = (len(idx), _SAMPLE_SIDE, _SAMPLE_SIDE)
    u = (grid.view(1, -1, 1) + torch.rand(shape, generator=gen, dtype=torch.float64)) / _SAMPLE_SIDE
    w = (grid.view(1, 1, -1) + torch.rand(shape, generator=gen, dtype=torch.float64)) / _SAMPLE_SIDE
    i = idx[:, 0].view(-1, 1, 1) * cell + (u * n_rows.view(-1, 1, 1)).long()  # (n, s, s) query positions
    j = idx[:, 1].view(-1, 1, 1) * cell + (w * n_cols.view(-1, 1, 1)).long()  # (n, s, s) key positions
    zero = torch.zeros((), dtype=torch.int64)
    kept = bm.mask.mod(zero, zero, i, j, bm.lq, bm.lk).expand(shape)
    return kept.flatten(1).float().mean(-1)


def mask_image(mask: Mask, lq: int, lk: int | None = None, *, max_pixels: int = 1024) -> Tensor:
    """``(rows, cols)`` float image of batch 0, head 0: the fraction of kept pairs per cell.

    Cells are single pairs when ``max(lq, lk) <= max_pixels``; otherwise square cells of
    ``ceil(max(lq, lk) / max_pixels)`` positions, classified as tiles (empty / full analytically).
    Partial cells of up to 64 x 64 positions are evaluated exactly; larger ones are estimated from
    a jittered 64 x 64 sample of their pairs (seeded: the same picture every time)."""
    lk = lq if lk is None else lk
    cell = max(1, math.ceil(max(lq, lk) / max_pixels))
    if cell == 1:
        return mask.dense4(lq, lk)[0, 0].float()
    bm = mask.blocks(lq, lk, cell, cell, refine=False)
    kinds = bm.kinds[0, 0]  # (nQ, nK)
    rows = (lq - torch.arange(kinds.shape[0]) * cell).clamp(max=cell).view(-1, 1)
    cols = (lk - torch.arange(kinds.shape[1]) * cell).clamp(max=cell).view(1, -1)
    img = (kinds == FULL).float()
    part = (kinds == PARTIAL).nonzero()  # (n, 2)
    step = max(1, _BUDGET // min(cell * cell, _SAMPLE_SIDE**2))
    gen = torch.Generator().manual_seed(0)
    for start in range(0, len(part), step):
        idx = part[start:start + step]
        img[idx[:, 0], idx[:, 1]] = _cell_fractions(bm, idx, cell, rows, cols, gen)
    img[kinds == EMPTY] = 0.0
    return img


def plot_mask(mask: Mask, lq: int, lk: int | None = None, *, ax: Any = None, title: str | None = None,
              max_pixels: int = 512, block: int = 64, density: float | None = None,
              block_density: float | None = None) -> Any:
    """Draw ``mask`` at size ``lq x lk`` on ``ax`` (a new figure if None) with its density and
    the fraction of ``block x block`` tiles a block-skipping kernel computes (pass ``density`` /
    ``block_density`` when already known, to skip counting). Black is attend, white masked; a
    colour bar says so. Returns the axes."""
    plt = _matplotlib()
    lk = lq if lk is None else lk
    if ax is None:
        _, ax = plt.subplots(figsize=(6.8, 6 * min(2.0, max(0.5, lq / lk))), layout="constrained")
    from matplotlib.colors import BoundaryNorm, ListedColormap, PowerNorm

    img = mask_image(mask, lq, lk, max_pixels=max_pixels)
    cell = max(1, math.ceil(max(lq, lk) / max_pixels))
    if cell == 1:  # every pixel is one pair: two colours
        cmap, norm = ListedColormap(["white", "black"]), BoundaryNorm([0.0, 0.5, 1.0], 2)
        ticks, labels = [0.25, 0.75], ["masked", "attend"]
    else:  # a power scale keeps thin bands (a window at T = 1M) visible
        cmap, norm = "Greys", PowerNorm(gamma=0.4, vmin=0.0, vmax=1.0)
        ticks, labels = [0.0, 0.01, 0.1, 0.5, 1.0], ["0 masked", "0.01", "0.1", "0.5", "1 attend"]
    im = ax.imshow(img.numpy(), cmap=cmap, norm=norm, interpolation="nearest" if img.shape[1] <= 512 else "antialiased",
                   extent=(0, lk, lq, 0), aspect="auto")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=ticks)
    bar.set_ticklabels(labels)
    bar.set_label("black = attend, white = masked" if cell == 1
                  else f"fraction of pairs attended per {cell}x{cell} cell (power scale)")
    dens = patterns.density(mask, lq, lk) if density is None else density
    bdens = patterns.block_density(mask, lq, lk, block=block) if block_density is None else block_density
    head = title if title is not None else repr(mask)
    if len(head) > 60:
        head = head[:57] + "..."
    ax.set_title(f"{head}\nT={lq} S={lk}  density {dens:.4g}  tiles kept ({block}x{block}) {bdens:.4g}",
                 fontsize=9)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    return ax


def save_mask(mask: Mask, path: str | Path, lq: int, lk: int | None = None, **kwargs: Any) -> Path:
    """Draw ``mask`` (see :func:`plot_mask`) and save the picture to ``path`` (PNG, SVG, PDF ...):
    at most 816 x 1440 pixels whatever ``lq`` and ``lk``."""
    plt = _matplotlib()
    ax = plot_mask(mask, lq, lk, **kwargs)
    path = Path(path)
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return path
