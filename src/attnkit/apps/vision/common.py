"""What the scene tasks (captioning, detection) share: cached scene sets, the training run around
a task's model (:func:`train_on_scenes`), reading and writing a canvas as a PNG, and the steps and
seconds a run took to reach quality thresholds.

Shape legend: N scenes, K items, S canvas side.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError
from ..trainer import RunFolder, TrainConfig, Trainer, cache_dir, write_json
from .scenes import Scene, SceneConfig, make_scenes

__all__ = ["ScenePreset", "SceneModel", "load_scenes", "train_on_scenes", "read_image", "write_image",
           "time_to_thresholds"]


@dataclass(frozen=True)
class ScenePreset:
    """Sizes of one scene run (captioning or detection): scenes, model and training."""

    n_train: int
    n_valid: int
    n_test: int
    batch_size: int
    model: dict[str, Any]  # the model config's fields
    train: TrainConfig


@dataclass
class SceneModel:
    """What a scene task hands :func:`train_on_scenes`: its network and model config (a dict for
    ``config.json``), extra ``config.json`` entries (its trivial baseline), its training batches
    and loss, and its validation metrics of a network."""

    net: nn.Module
    model_config: dict[str, Any]
    extra: dict[str, Any]
    batches: Callable[..., Any]
    loss_fn: Callable[..., Any]
    evaluate: Callable[[nn.Module], dict[str, float]]


def train_on_scenes(task: str, what: str, *, data: str, model: str, preset: ScenePreset, quick: bool,
                    setup: Callable[[list[Scene], list[Scene]], SceneModel], evaluate_run: Callable[..., Any],
                    budget_minutes: float | None, max_steps: int | None, eval_every: int | None, target: float | None,
                    out: str | Path | None, seed: int, progress: bool, resume: bool,
                    log: Callable[[str], None]) -> tuple[RunFolder, dict[str, Any]]:
    """One training run of a scene task (``what``: "captioner", "detector"): the preset's budgets
    with the user's, the cached training and validation scenes, the run folder and its
    ``config.json``, the shared trainer, then ``evaluate_run`` on the held-out scenes. ``setup``
    builds the task's :class:`SceneModel` from the training and validation scenes, after the
    seed is set."""
    cfg = preset.train.overridden(seed=seed, progress=progress, budget_minutes=budget_minutes, max_steps=max_steps,
                                  target=target, eval_every=eval_every)
    RunFolder.refuse_existing(out, resume)
    t0 = time.perf_counter()
    train_scenes = load_scenes("train", preset.n_train)
    valid = load_scenes("valid", preset.n_valid)
    run = RunFolder.create(task, model, out)
    torch.manual_seed(seed)
    m = setup(train_scenes, valid)
    parameters = sum(p.numel() for p in m.net.parameters())
    write_json(run / "config.json", {
        "task": task, "data": data, "preset": "quick" if quick else "full", "model": m.model_config,
        "train": asdict(cfg), "batch_size": preset.batch_size, "scenes": asdict(SceneConfig()),
        "sizes": {"train": preset.n_train, "valid": preset.n_valid, "test": preset.n_test},
        **m.extra, "parameters": parameters})
    trainer = Trainer(m.net, cfg, run, batches=m.batches, loss_fn=m.loss_fn, evaluate=m.evaluate)
    return trainer.fit_and_evaluate(f"the {model} {what}: {len(train_scenes)} scenes, {parameters:,} parameters",
                                    evaluate_run, started=t0, resume=resume, log=log)


def _pack(scenes: Sequence[Scene]) -> dict[str, Any]:
    return {"images": torch.stack([s.image for s in scenes]), "boxes": torch.cat([s.boxes for s in scenes]),
            "labels": torch.cat([s.labels for s in scenes]), "sources": torch.cat([s.sources for s in scenes]),
            "counts": torch.tensor([len(s.labels) for s in scenes]), "captions": [s.caption for s in scenes],
            "split": scenes[0].split}


def _unpack(d: dict[str, Any]) -> list[Scene]:
    out, at = [], 0
    for i, k in enumerate(d["counts"].tolist()):
        out.append(Scene(d["images"][i], d["boxes"][at: at + k], d["labels"][at: at + k], d["sources"][at: at + k],
                         d["captions"][i], d["split"]))
        at += k
    return out


def load_scenes(split: str, n: int, *, seed: int = 0, config: SceneConfig | None = None) -> list[Scene]:
    """:func:`~attnkit.apps.vision.scenes.make_scenes`, cached under ``$ATTNKIT_CACHE/scenes``."""
    cfg = config or SceneConfig()
    key = hashlib.sha1(json.dumps([split, n, seed, asdict(cfg), 1]).encode()).hexdigest()[:16]
    path = cache_dir("scenes") / f"{split}-{n}-{key}.pt"
    if path.exists():
        try:
            return _unpack(torch.load(path, weights_only=True))
        except (RuntimeError, KeyError, EOFError):  # a damaged cache file is redrawn
            path.unlink(missing_ok=True)
    scenes = make_scenes(split, n, seed=seed, config=cfg)
    tmp = path.with_suffix(".tmp")
    torch.save(_pack(scenes), tmp)
    tmp.replace(path)
    return scenes


def read_image(path: str | Path, side: int) -> Tensor:
    """A greyscale PNG (or any image Pillow reads) of ``side x side`` pixels as ``(side, side)``
    uint8, light items on a dark ground like the scenes. An unreadable file, a colour image or
    another size raises an :class:`AttnKitError` naming the file, what it is and what is expected."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise AttnKitError(f"image {str(path)!r} does not exist or is not a file; expected a {side}x{side} "
                           "greyscale PNG")
    try:
        with Image.open(p) as im:
            im.load()
            bands, mode, size = im.getbands(), im.mode, im.size
            if len(bands) != 1:
                raise AttnKitError(f"image {str(path)!r} has {len(bands)} channels ({mode}); expected 1 "
                                   f"(a greyscale {side}x{side} image)")
            if size != (side, side):
                raise AttnKitError(f"image {str(path)!r} is {size[0]}x{size[1]} pixels; expected {side}x{side} "
                                   "(the run's canvas)")
            if mode not in ("L", "1"):
                raise AttnKitError(f"image {str(path)!r} has pixel mode {mode}; expected 8-bit greyscale (L)")
            grey = im.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, AttnKitError):
            raise
        raise AttnKitError(f"image {str(path)!r} cannot be read ({type(exc).__name__}); expected a {side}x{side} "
                           "greyscale PNG") from None
    return torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).reshape(side, side).clone()


def write_image(image: Tensor, path: str | Path) -> Path:
    """Save a canvas ``(S, S)`` uint8 as a greyscale PNG."""
    from PIL import Image

    if image.dim() != 2 or image.dtype != torch.uint8:
        raise AttnKitError(f"image must be (S, S) uint8; got {tuple(image.shape)} {image.dtype}")
    Image.fromarray(image.numpy(), mode="L").save(path)
    return Path(path)


def time_to_thresholds(evals: Sequence[dict[str, Any]], metric: str,
                       thresholds: Sequence[float]) -> dict[str, dict[str, Any] | None]:
    """For each threshold, the first evaluation whose ``metric`` reached it: ``{"step", "seconds"}``
    (training seconds, evaluations not counted), or None if no evaluation did."""
    out: dict[str, dict[str, Any] | None] = {}
    for t in thresholds:
        hit = next((e for e in evals if e.get(metric, float("-inf")) >= t), None)
        out[str(t)] = None if hit is None else {"step": hit["step"], "seconds": hit["seconds"]}
    return out
