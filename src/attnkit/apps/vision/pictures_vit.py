"""Pictures of ViT runs (matplotlib, written to files): attention-rollout overlays, the class
token's rolled-out attention over the patches drawn on the image.

Shape legend: B images, H x W pixels, g x g patches.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .classify import MEAN, STD
from .data import CLASSES
from .vit import ViT, rollout_maps

__all__ = ["overlay_maps", "rollout_grid", "rollout_overlay", "curves_plot"]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def overlay_maps(maps: Tensor, side: int) -> Tensor:
    """Rollout maps ``(B, g, g)`` upsampled to ``(B, side, side)`` and scaled to [0, 1] per image."""
    up = F.interpolate(maps.unsqueeze(1), size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return (up - lo) / (hi - lo).clamp_min(1e-12)


def _draw(ax, image: Tensor, heat: Tensor, title: str) -> None:
    ax.imshow((image * STD + MEAN).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.imshow(heat.numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def rollout_grid(model: ViT, images: Tensor, labels: Tensor | None, path: str | Path) -> Path:
    """Overlays of ``images (B, 1, H, W)`` (normalised) in one row pair: the image, then the image
    with its rollout; titles give the prediction (and the true class when ``labels`` are given)."""
    maps = rollout_maps(model, images)  # (B, g, g)
    with torch.no_grad():
        pred = model(images).argmax(-1)
    heat = overlay_maps(maps, images.shape[-1])
    n = images.shape[0]
    fig = _figure(1.5 * n, 3.4)
    for b in range(n):
        title = CLASSES[int(pred[b])] + ("" if labels is None else f"\n(true: {CLASSES[int(labels[b])]})")
        ax = fig.add_subplot(2, n, b + 1)
        ax.imshow((images[b, 0] * STD + MEAN).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
        _draw(fig.add_subplot(2, n, n + b + 1), images[b, 0], heat[b], "rollout")
    fig.suptitle("attention rollout from the class token (Abnar & Zuidema 2020)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def rollout_overlay(model: ViT, image: Tensor, path: str | Path, *, title: str = "") -> Path:
    """One image ``(1, H, W)`` (normalised) beside its rollout overlay."""
    heat = overlay_maps(rollout_maps(model, image.unsqueeze(0)), image.shape[-1])[0]
    fig = _figure(4.4, 2.4)
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow((image[0] * STD + MEAN).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input (28 x 28)", fontsize=8)
    _draw(fig.add_subplot(1, 2, 2), image[0], heat, "attention rollout")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def curves_plot(runs: dict[str, str | Path], path: str | Path) -> Path:
    """Validation accuracy against training seconds and steps, one line per run (``{label: run folder}``),
    read from each run's ``metrics.jsonl``."""
    import json

    fig = _figure(8.0, 3.2)
    by_seconds, by_steps = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, folder in runs.items():
        lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
        evals = [e for e in map(json.loads, filter(str.strip, lines)) if e.get("event") == "eval"]
        acc = [100 * e["accuracy"] for e in evals]
        by_seconds.plot([e["seconds"] for e in evals], acc, marker="o", ms=3, label=label)
        by_steps.plot([e["step"] for e in evals], acc, marker="o", ms=3, label=label)
    for ax, xlabel in ((by_seconds, "training seconds"), (by_steps, "optimizer steps")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
    by_steps.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
