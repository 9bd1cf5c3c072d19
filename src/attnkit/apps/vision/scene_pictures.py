"""Pictures of the scene tasks (matplotlib, written to files): a scene with its boxes, the
"show, attend and tell" grid (one panel per generated word with its cross-attention over the
canvas), and each detected object with the decoder's cross-attention drawn on the canvas.

Shape legend: S canvas side, g x g attention grid (patch tokens), T words, K objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from ...errors import ShapeError
from .data import CLASSES

__all__ = ["scene_picture", "caption_attention_grid", "detection_attention"]

_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
            "#fabebe")


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def _upsampled(weights: Tensor, side: int) -> Tensor:
    """A ``(g, g)`` attention map as ``(S, S)`` (nearest: each patch a square), scaled to max 1."""
    m = F.interpolate(weights[None, None].float(), size=(side, side), mode="nearest")[0, 0]
    return m / m.max().clamp(min=1e-12)


def _canvas(ax, image: Tensor, title: str = "") -> None:
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _box(ax, box: Sequence[float], colour: str, label: str = "", dashed: bool = False) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2,
                           linestyle="--" if dashed else "-"))
    if label:  # above the box, or below it when the box touches the top edge
        top = y0 >= 8
        ax.text(x0 - 0.5, y0 - 1.5 if top else y1 + 0.5, label, color=colour, fontsize=5.5,
                va="bottom" if top else "top", bbox=dict(facecolor="black", alpha=0.5, pad=0.5, linewidth=0))


def _check_grid(weights: Tensor, name: str) -> int:
    g = int(round(weights.shape[-1] ** 0.5))
    if g * g != weights.shape[-1]:
        raise ShapeError(f"{name} must end in a square number of patch tokens; got {tuple(weights.shape)}")
    return g


def scene_picture(image: Tensor, boxes: Tensor, labels: Tensor, path: str | Path, *, title: str = "",
                  scores: Tensor | None = None) -> Path:
    """The canvas ``(S, S)`` with boxes ``(K, 4)`` and their class names (and scores)."""
    fig = _figure(3.6, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    _canvas(ax, image)
    for k, (b, c) in enumerate(zip(boxes, labels)):
        text = CLASSES[int(c)] + ("" if scores is None else f" {float(scores[k]):.2f}")
        _box(ax, b, _COLOURS[int(c)], text)
    ax.set_title(title, fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def caption_attention_grid(image: Tensor, words: Sequence[str], weights: Tensor, path: str | Path, *,
                           title: str = "", cols: int = 6) -> Path:
    """"Show, attend and tell": the canvas ``(S, S)``, then for each generated word (with ``</s>``
    last) its cross-attention ``weights (T, g*g)`` over the patches, laid over the canvas."""
    if weights.dim() != 2 or weights.shape[0] != len(words):
        raise ShapeError(f"weights must be (T, N) with T = {len(words)} words; got {tuple(weights.shape)}")
    g = _check_grid(weights, "weights")
    side = image.shape[-1]
    panels = len(words) + 1
    rows = (panels + cols - 1) // cols
    fig = _figure(1.55 * cols, 1.7 * rows + 0.4)
    ax = fig.add_subplot(rows, cols, 1)
    _canvas(ax, image, "input")
    for t, word in enumerate(words):
        ax = fig.add_subplot(rows, cols, t + 2)
        _canvas(ax, image, f"{t + 1}: {word}")
        ax.imshow(_upsampled(weights[t].reshape(g, g), side).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                  interpolation="nearest")
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86 if rows == 1 else 0.9, wspace=0.08,
                        hspace=0.3)
    fig.savefig(path)
    return Path(path)


def detection_attention(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, weights: Tensor | None,
                        path: str | Path, *, title: str = "", truth: Tensor | None = None) -> Path:
    """All detections (boxes ``(K, 4)``, ``labels (K,)``, ``scores (K,)``; dashed: the true boxes
    ``truth (M, 4)`` when given) on the canvas, then one panel per detection with the decoder's
    cross-attention ``weights (K, g*g)`` of its query laid over the canvas (none without weights)."""
    k = len(labels)
    if weights is not None and (weights.dim() != 2 or weights.shape[0] != k):
        raise ShapeError(f"weights must be (K, N) with K = {k} detections; got {tuple(weights.shape)}")
    g = _check_grid(weights, "weights") if weights is not None else 0
    side = image.shape[-1]
    panels = 1 + (k if weights is not None else 0)
    fig = _figure(2.1 * panels, 2.5)
    ax = fig.add_subplot(1, panels, 1)
    _canvas(ax, image, "detections")
    for b in [] if truth is None else truth:
        _box(ax, b, "white", dashed=True)
    for b, c, s in zip(boxes, labels, scores):
        _box(ax, b, _COLOURS[int(c)], f"{CLASSES[int(c)]} {float(s):.2f}")
    for j in range(k if weights is not None else 0):
        ax = fig.add_subplot(1, panels, j + 2)
        _canvas(ax, image, f"query of: {CLASSES[int(labels[j])]}")
        ax.imshow(_upsampled(weights[j].reshape(g, g), side).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                  interpolation="nearest")
        _box(ax, boxes[j], _COLOURS[int(labels[j])])
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.8, wspace=0.08)
    fig.savefig(path)
    return Path(path)
