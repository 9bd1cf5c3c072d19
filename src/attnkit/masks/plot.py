"""Pictures of attention masks and sparse patterns (matplotlib, imported only when drawing).

>>> from attnkit.masks import patterns
>>> from attnkit.masks.plot import mask_image
>>> mask_image(patterns.sliding_window(1), 4).tolist()
[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]

In a notebook: ``plot_mask(patterns.bigbird(64), 4096)``; from the shell:
``attnkit masks show bigbird --T 4096 --out bigbird.png``. Large sizes are drawn at most
``max_pixels`` cells a side, each cell shaded by the fraction of its pairs that are kept
(computed tile by tile, never as a ``T x S`` buffer).
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


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("drawing masks needs matplotlib: pip install 'attnkit[viz]' (or matplotlib)") from exc
    return plt


def mask_image(mask: Mask, lq: int, lk: int | None = None, *, max_pixels: int = 1024) -> Tensor:
    """``(rows, cols)`` float image of batch 0, head 0: the fraction of kept pairs per cell.

    Cells are single pairs when ``max(lq, lk) <= max_pixels``; otherwise square cells of
    ``ceil(max(lq, lk) / max_pixels)`` positions, classified as tiles (empty / full analytically,
    partial ones evaluated in chunks)."""
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
    step = max(1, _BUDGET // (cell * cell))
    for start in range(0, len(part), step):
        idx = part[start:start + step]
        tiles = torch.cat([torch.zeros(len(idx), 2, dtype=torch.int64), idx], 1)
        kept = bm.tile_mask(tiles).flatten(1).sum(-1).float()  # (n,)
        img[idx[:, 0], idx[:, 1]] = kept / (rows[idx[:, 0], 0] * cols[0, idx[:, 1]]).float()
    img[kinds == EMPTY] = 0.0
    return img


def plot_mask(mask: Mask, lq: int, lk: int | None = None, *, ax: Any = None, title: str | None = None,
              max_pixels: int = 1024, block: int = 64) -> Any:
    """Draw ``mask`` at size ``lq x lk`` on ``ax`` (a new figure if None) with its density and
    the fraction of ``block x block`` tiles a block-sparse kernel computes. Returns the axes."""
    plt = _matplotlib()
    lk = lq if lk is None else lk
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6 * min(2.0, max(0.5, lq / lk))))
    img = mask_image(mask, lq, lk, max_pixels=max_pixels)
    ax.imshow(img.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest",
              extent=(0, lk, lq, 0), aspect="auto")
    dens = patterns.density(mask, lq, lk)
    bdens = patterns.block_density(mask, lq, lk, block=block)
    head = title if title is not None else repr(mask)
    if len(head) > 60:
        head = head[:57] + "..."
    ax.set_title(f"{head}\nT={lq} S={lk}  density {dens:.4f}  tiles kept ({block}x{block}) {bdens:.3f}",
                 fontsize=9)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    return ax


def save_mask(mask: Mask, path: str | Path, lq: int, lk: int | None = None, **kwargs: Any) -> Path:
    """Draw ``mask`` (see :func:`plot_mask`) and save the picture to ``path`` (PNG, SVG, PDF ...)."""
    plt = _matplotlib()
    ax = plot_mask(mask, lq, lk, **kwargs)
    path = Path(path)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    return path
