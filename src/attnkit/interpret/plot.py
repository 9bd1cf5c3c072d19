"""PNG views of attention weights (matplotlib, no display needed).

* :func:`head_grid`: one heatmap per head of one layer;
* :func:`model_overview`: a layer x head grid of small heatmaps;
* :func:`lines_view`: token-to-token lines (query tokens left, key tokens right), one colour per head;
* :func:`matrix_view`: one labelled heatmap (rollout, flow, a single head).

Shapes: weights ``(H, T, S)`` per layer, ``(L, H, T, S)`` per model; tokens label the axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ..errors import ShapeError

__all__ = ["head_grid", "model_overview", "lines_view", "matrix_view", "HEAD_COLORS"]

HEAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
               "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Figure objects need no GUI backend

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def _check(weights: Tensor, dims: int, name: str) -> Tensor:
    if not isinstance(weights, Tensor) or weights.dim() != dims:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ShapeError(f"{name} must be a {dims}-D tensor; got {got}")
    return weights.detach().float().cpu()


def _label(ax, tokens: Sequence[str] | None, n_rows: int, n_cols: int, fontsize: int = 8) -> None:
    if tokens is None:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.set_xticks(range(n_cols), list(tokens)[:n_cols], rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n_rows), list(tokens)[:n_rows], fontsize=fontsize)


def matrix_view(matrix: Tensor, tokens: Sequence[str] | None, path: str | Path, *, title: str = "",
                cmap: str = "viridis") -> Path:
    """One heatmap ``(T, S)``: rows are queries (or output tokens), columns keys (input tokens)."""
    m = _check(matrix, 2, "matrix")
    side = max(3.0, 0.35 * m.shape[1] + 1.5)
    fig = _figure(side + 1, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m.numpy(), cmap=cmap, vmin=0)
    _label(ax, tokens, *m.shape)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def head_grid(weights: Tensor, tokens: Sequence[str] | None, path: str | Path, *, title: str = "") -> Path:
    """Heatmaps of every head of one layer, ``weights (H, T, S)``, in a near-square grid."""
    w = _check(weights, 3, "weights")
    n_heads = w.shape[0]
    cols = math.ceil(math.sqrt(n_heads))
    rows = math.ceil(n_heads / cols)
    cell = max(2.2, 0.22 * w.shape[-1] + 0.8)
    fig = _figure(cols * cell, rows * cell + 0.4)
    for h in range(n_heads):
        ax = fig.add_subplot(rows, cols, h + 1)
        ax.imshow(w[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        _label(ax, tokens, *w.shape[1:], fontsize=6)
        ax.set_title(f"head {h}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def model_overview(attentions: Tensor, path: str | Path, *, title: str = "") -> Path:
    """Every head of every layer, ``attentions (L, H, T, S)``: a layer x head grid of heatmaps."""
    a = _check(attentions, 4, "attentions")
    n_layers, n_heads = a.shape[:2]
    fig = _figure(1.1 * n_heads + 0.6, 1.1 * n_layers + 0.6)
    for ell in range(n_layers):
        for h in range(n_heads):
            ax = fig.add_subplot(n_layers, n_heads, ell * n_heads + h + 1)
            ax.imshow(a[ell, h].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if ell == 0:
                ax.set_title(f"h{h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"L{ell}", fontsize=8)
    fig.suptitle(title or "attention: layers (rows) x heads (columns)", fontsize=11)
    return _save(fig, path)


def lines_view(weights: Tensor, tokens: Sequence[str], path: str | Path, *, heads: Sequence[int] | None = None,
               title: str = "", threshold: float = 0.02) -> Path:
    """Token-to-token lines for ``weights (H, T, S)`` (or ``(T, S)``): each query token on the left
    is joined to the key tokens on the right, line opacity = weight, one colour per head."""
    w = weights.detach().float().cpu()
    if w.dim() == 2:
        w = w.unsqueeze(0)
    w = _check(w, 3, "weights")
    n_q, n_k = w.shape[1:]
    if len(tokens) < max(n_q, n_k):
        raise ShapeError(f"tokens has {len(tokens)} entries; the weights cover {max(n_q, n_k)} tokens")
    heads = list(range(w.shape[0])) if heads is None else list(heads)
    fig = _figure(5.0, max(3.0, 0.3 * max(n_q, n_k) + 1))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(max(n_q, n_k) - 0.5, -0.5)
    ax.axis("off")
    for i in range(n_q):
        ax.text(0, i, tokens[i], ha="right", va="center", fontsize=9)
    for j in range(n_k):
        ax.text(1, j, tokens[j], ha="left", va="center", fontsize=9)
    alpha_scale = 1.0 / max(1, len(heads)) ** 0.5
    for h in heads:
        color = HEAD_COLORS[h % len(HEAD_COLORS)]
        for i in range(n_q):
            for j in range(n_k):
                a = float(w[h, i, j])
                if a >= threshold:
                    ax.plot([0.05, 0.95], [i, j], color=color, alpha=min(1.0, a * alpha_scale), linewidth=1.5)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
