"""PNG views of attention weights (matplotlib, no display needed).

* :func:`head_grid`: one heatmap per head of one layer, one shared colour bar;
* :func:`model_overview`: a layer x head grid of small heatmaps;
* :func:`lines_view`: token-to-token lines (query tokens left, key tokens right), one colour per head;
* :func:`matrix_view`: one labelled heatmap (rollout, flow, a single head).

Every picture has a bounded size, whatever the number of tokens: at most :data:`MAX_SIDE_PX`
pixels on its longest side and :data:`MAX_PIXELS` pixels in all. Long inputs are shown
faithfully but coarser, and the title says how: heatmaps average ``p x p`` blocks of tokens into
one cell beyond :data:`MAX_CELLS` tokens and label every ``k``-th token when the labels would not
fit; the lines view pools consecutive tokens into at most :data:`MAX_LINE_TOKENS` groups.

Shapes: weights ``(H, T, S)`` per layer, ``(L, H, T, S)`` per model; tokens label the axes
(rows: queries, columns: keys).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["head_grid", "model_overview", "lines_view", "matrix_view", "HEAD_COLORS", "MAX_SIDE_PX",
           "MAX_PIXELS", "MAX_CELLS", "OVERVIEW_CELLS", "MAX_LINE_TOKENS"]

HEAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
               "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")

DPI = 100
MAX_SIDE_PX = 2400  # longest side of any picture
MAX_PIXELS = 5_000_000  # width x height of any picture
MAX_CELLS = 256  # heatmap cells per side; longer inputs are averaged in p x p token blocks
OVERVIEW_CELLS = 64  # cells per side of each small panel of the model overview
MAX_LINE_TOKENS = 48  # rows of the lines view; longer inputs are pooled into token groups
_LABEL_CHARS = 14  # token labels are cut to this many characters


def _figure(width: float, height: float):
    """A figure of at most ``MAX_SIDE_PX`` a side and ``MAX_PIXELS`` in all (shrunk to fit)."""
    from matplotlib.figure import Figure  # Figure objects need no GUI backend

    scale = min(1.0, MAX_SIDE_PX / (DPI * max(width, height)), math.sqrt(MAX_PIXELS / (DPI**2 * width * height)))
    return Figure(figsize=(width * scale, height * scale), dpi=DPI, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # no tight bbox: the file has the figure's (bounded) size
    return path


def _check(weights: Tensor, dims: int, name: str) -> Tensor:
    if not isinstance(weights, Tensor) or weights.dim() != dims:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ShapeError(f"{name} must be a {dims}-D tensor; got {got}")
    return weights.detach().float().cpu()


def _check_tokens(tokens: Sequence[str] | None, n: int) -> list[str] | None:
    if tokens is None:
        return None
    if len(tokens) < n:
        raise ShapeError(f"tokens has {len(tokens)} entries; the weights cover {n} tokens")
    return [t if len(t) <= _LABEL_CHARS else t[:_LABEL_CHARS - 1] + "~" for t in list(tokens)[:n]]


def _pool(m: Tensor, max_cells: int) -> tuple[Tensor, int]:
    """Average ``p x p`` blocks of the last two dims of ``m (..., T, S)`` so that neither exceeds
    ``max_cells``; returns the pooled tensor and ``p`` (1: unchanged). Edge blocks average the
    positions they hold."""
    p = max(1, math.ceil(max(m.shape[-2:]) / max_cells))
    if p == 1:
        return m, 1
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:])
    pooled = torch.nn.functional.avg_pool2d(flat, p, ceil_mode=True)
    return pooled.reshape(*lead, *pooled.shape[-2:]), p


def _every(n: int, length_in: float, fontsize: float) -> int:
    """Label every k-th of ``n`` tokens so that labels ``fontsize`` points high fit in ``length_in`` inches."""
    fits = max(1, int(length_in * 72 / (fontsize * 1.35)))
    return max(1, math.ceil(n / fits))


def _nth(k: int) -> str:
    return {1: "", 2: "every 2nd token", 3: "every 3rd token"}.get(k, f"every {k}th token")


def _show(ax, m: Tensor, n_rows: int, n_cols: int, **kwargs):
    """``imshow`` of a (possibly pooled) matrix in token coordinates: cell ``(i, j)`` of the full
    ``n_rows x n_cols`` matrix sits at ``(j, i)`` whatever the pooling."""
    return ax.imshow(m.numpy(), extent=(-0.5, n_cols - 0.5, n_rows - 0.5, -0.5), interpolation="nearest",
                     aspect="auto", **kwargs)


def _ticks(ax, tokens: list[str] | None, n_rows: int, n_cols: int, size_in: tuple[float, float], fontsize: float,
           *, x_labels: bool = True, y_labels: bool = True) -> tuple[int, int]:
    """Token labels on both axes, every k-th one where they would not fit; returns the steps."""
    if tokens is None:
        return 1, 1
    kx = _every(n_cols, size_in[0], fontsize)
    ky = _every(n_rows, size_in[1], fontsize)
    xs, ys = range(0, n_cols, kx), range(0, n_rows, ky)
    ax.set_xticks(list(xs), [tokens[j] for j in xs] if x_labels else [], rotation=90, fontsize=fontsize)
    ax.set_yticks(list(ys), [tokens[i] for i in ys] if y_labels else [], fontsize=fontsize)
    return kx, ky


def _axis_titles(ax, kx: int, ky: int, *, x: bool = True, y: bool = True, fontsize: float = 9) -> None:
    if x:
        ax.set_xlabel("key" + (f" ({_nth(kx)} labelled)" if kx > 1 else ""), fontsize=fontsize)
    if y:
        ax.set_ylabel("query" + (f" ({_nth(ky)} labelled)" if ky > 1 else ""), fontsize=fontsize)


def _pool_note(p: int) -> str:
    return f" [{p}x{p} tokens averaged per cell]" if p > 1 else ""


def matrix_view(matrix: Tensor, tokens: Sequence[str] | None, path: str | Path, *, title: str = "",
                cmap: str = "viridis", colorbar_label: str = "weight") -> Path:
    """One heatmap ``(T, S)``: rows are queries (or output tokens), columns keys (input tokens),
    with a colour bar."""
    m = _check(matrix, 2, "matrix")
    n_rows, n_cols = m.shape
    toks = _check_tokens(tokens, max(n_rows, n_cols))
    side = min(14.0, max(4.0, 0.18 * max(n_rows, n_cols) + 2.5))
    fig = _figure(side + 1.8, side * max(0.5, min(2.0, n_rows / n_cols)) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    shown, p = _pool(m, MAX_CELLS)
    im = _show(ax, shown, n_rows, n_cols, cmap=cmap, vmin=0)
    kx, ky = _ticks(ax, toks, n_rows, n_cols, (side, side), 8)
    _axis_titles(ax, kx, ky)
    ax.set_title(title + _pool_note(p), fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=colorbar_label + (" (cell mean)" if p > 1 else ""))
    return _save(fig, path)


def head_grid(weights: Tensor, tokens: Sequence[str] | None, path: str | Path, *, title: str = "") -> Path:
    """Heatmaps of every head of one layer, ``weights (H, T, S)``, in a near-square grid with one
    shared colour bar; token labels on the outer panels."""
    w = _check(weights, 3, "weights")
    n_heads, n_rows, n_cols = w.shape
    toks = _check_tokens(tokens, max(n_rows, n_cols))
    cols = math.ceil(math.sqrt(n_heads))
    rows = math.ceil(n_heads / cols)
    cell = min(6.0, max(2.6, 0.12 * max(n_rows, n_cols) + 2.0))
    fig = _figure(cols * cell + 1.2, rows * cell + 0.8)
    shown, p = _pool(w, MAX_CELLS)
    vmax = max(float(shown.max()), 1e-6)
    fontsize = 7 if max(n_rows, n_cols) <= 24 else 5
    axes, im = [], None
    for h in range(n_heads):
        r, c = divmod(h, cols)
        ax = fig.add_subplot(rows, cols, h + 1)
        im = _show(ax, shown[h], n_rows, n_cols, cmap="viridis", vmin=0, vmax=vmax)
        last_row = r == rows - 1 or h + cols >= n_heads
        kx, ky = _ticks(ax, toks, n_rows, n_cols, (cell, cell), fontsize, x_labels=last_row, y_labels=c == 0)
        _axis_titles(ax, kx, ky, x=last_row, y=c == 0, fontsize=8)
        ax.set_title(f"head {h}", fontsize=9)
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight" + (" (cell mean)" if p > 1 else ""))
    fig.suptitle(f"{title + ': ' if title else ''}{n_heads} heads, rows = query, columns = key{_pool_note(p)}",
                 fontsize=11)
    return _save(fig, path)


def model_overview(attentions: Tensor, path: str | Path, *, title: str = "") -> Path:
    """Every head of every layer, ``attentions (L, H, T, S)``: a layer x head grid of heatmaps
    with one shared colour bar."""
    a = _check(attentions, 4, "attentions")
    n_layers, n_heads, n_rows, n_cols = a.shape
    panel = max(0.5, min(1.3, 20.0 / n_heads, 14.0 / n_layers))
    fig = _figure(n_heads * panel + 1.6, n_layers * panel + 1.2)
    shown, p = _pool(a, OVERVIEW_CELLS)
    vmax = max(float(shown.max()), 1e-6)
    axes, im = [], None
    for ell in range(n_layers):
        for h in range(n_heads):
            ax = fig.add_subplot(n_layers, n_heads, ell * n_heads + h + 1)
            im = _show(ax, shown[ell, h], n_rows, n_cols, cmap="viridis", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if ell == 0:
                ax.set_title(f"h{h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"L{ell}", fontsize=8)
            axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight" + (" (cell mean)" if p > 1 else ""))
    fig.supxlabel("heads; in each cell rows = query, columns = key", fontsize=9)
    fig.supylabel("layers", fontsize=9)
    fig.suptitle((title or "attention: layers (rows) x heads (columns)") + _pool_note(p), fontsize=11)
    return _save(fig, path)


def _group(w: Tensor, tokens: list[str], max_groups: int) -> tuple[Tensor, list[str], list[str], int]:
    """Pool ``w (H, T, S)`` into groups of ``g`` consecutive tokens: the weight from query group
    ``a`` to key group ``b`` is the mean over ``a``'s queries of the weight summed over ``b``'s
    keys (rows still sum to 1). Returns the pooled weights, query and key labels, and ``g``."""
    n_q, n_k = w.shape[1:]
    g = max(1, math.ceil(max(n_q, n_k) / max_groups))
    if g == 1:
        return w, tokens[:n_q], tokens[:n_k], 1
    pooled = torch.nn.functional.avg_pool2d(w.unsqueeze(1), g, ceil_mode=True).squeeze(1)  # (H, nQ, nK) means
    sizes = torch.tensor([min(g, n_k - b * g) for b in range(pooled.shape[-1])], dtype=pooled.dtype)
    pooled = pooled * sizes  # mean over the key group -> sum over it

    def labels(n: int) -> list[str]:
        return [f"{a}-{min(n, a + g) - 1} {tokens[a]}" for a in range(0, n, g)]

    return pooled, labels(n_q), labels(n_k), g


def lines_view(weights: Tensor, tokens: Sequence[str], path: str | Path, *, heads: Sequence[int] | None = None,
               title: str = "", threshold: float = 0.02) -> Path:
    """Token-to-token lines for ``weights (H, T, S)`` (or ``(T, S)``): each query token on the left
    is joined to the key tokens on the right, line opacity = weight, one colour per head (legend);
    lines below ``threshold`` are left out. Beyond :data:`MAX_LINE_TOKENS` tokens, consecutive
    tokens are pooled into groups (the title says so) and the threshold is at least twice the
    uniform weight of a group."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D

    w = weights.detach().float().cpu()
    if w.dim() == 2:
        w = w.unsqueeze(0)
    w = _check(w, 3, "weights")
    n_q, n_k = w.shape[1:]
    toks = _check_tokens(tokens, max(n_q, n_k))
    heads = list(range(w.shape[0])) if heads is None else list(heads)
    bad = [h for h in heads if not 0 <= h < w.shape[0]]
    if bad:
        raise ShapeError(f"heads {bad} out of range; the weights have {w.shape[0]} heads")
    w, q_labels, k_labels, g = _group(w, toks, MAX_LINE_TOKENS)
    n_q, n_k = w.shape[1:]
    n = max(n_q, n_k)
    if g > 1:  # pooled rows: hide lines below twice the uniform weight of a key group
        threshold = max(threshold, 2.0 / n_k)
    fig = _figure(7.0, max(3.5, 0.28 * n + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(-0.75, 1.75)
    ax.set_ylim(n - 0.5, -1.2)
    ax.axis("off")
    fontsize = 9 if g == 1 else 8
    for i, lab in enumerate(q_labels):
        ax.text(0, i, lab, ha="right", va="center", fontsize=fontsize)
    for j, lab in enumerate(k_labels):
        ax.text(1, j, lab, ha="left", va="center", fontsize=fontsize)
    ax.text(0, -0.9, "query", ha="right", va="center", fontsize=10, weight="bold")
    ax.text(1, -0.9, "key", ha="left", va="center", fontsize=10, weight="bold")
    alpha_scale = 1.0 / max(1, len(heads)) ** 0.5
    ii, jj = torch.meshgrid(torch.arange(n_q), torch.arange(n_k), indexing="ij")
    handles = []
    for h in heads:
        color = HEAD_COLORS[h % len(HEAD_COLORS)]
        keep = w[h] >= threshold  # (nQ, nK)
        qi, kj, val = ii[keep].tolist(), jj[keep].tolist(), w[h][keep].clamp(max=1.0).tolist()
        segments = [[(0.05, i), (0.95, j)] for i, j in zip(qi, kj)]
        colors = [(*to_rgb(color), min(1.0, v * alpha_scale)) for v in val]
        ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.5))
        handles.append(Line2D([], [], color=color, linewidth=2, label=f"head {h}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8,
               title=f"line opacity = weight (shown if >= {threshold:.3g})", title_fontsize=8)
    note = (f"\n[{g} consecutive tokens pooled per row: mean over its queries of the weights summed over "
            f"a group's keys]" if g > 1 else "")
    ax.set_title(title + note, fontsize=10 if g == 1 else 8)
    return _save(fig, path)
