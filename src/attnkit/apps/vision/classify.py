"""Fashion-MNIST classification end to end: a ViT (global or neighbourhood attention) against a
small CNN without attention, trained on the shared trainer, evaluated on the held-out test set
with the majority-class baseline, steps and seconds to validation-accuracy thresholds, and
attention-rollout pictures.

Splits: the last 5,000 of a fixed shuffle of the 60,000 training images are the validation set
(never trained on); the 10,000 test images are only evaluated. Presets: ``quick`` (the test
suite's size: well under a minute on 2 cores) and ``full``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import AttnKitError, ShapeError
from ..trainer import RunFolder, TrainConfig, Trainer, TrainResult, load_weights, read_json, write_json
from .data import CLASSES, load_fashion_mnist
from .vit import MODELS, ModelConfig, ViT, build_model

__all__ = ["TASK", "Preset", "PRESETS", "THRESHOLDS", "MEAN", "STD", "load_splits", "normalize", "shift_flip",
           "predict", "train",
           "LoadedRun", "load_run", "evaluate_run", "summary", "read_image", "classify_image"]

TASK = "vit"
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92)  # validation accuracies whose first step and second are reported
MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training pixels in [0, 1]
N_VALID = 5000


@dataclass(frozen=True)
class Preset:
    """Sizes of one run: data, models and training."""

    n_train: int | None  # training images (None: all 55,000 outside the validation set)
    n_valid: int  # validation images (from the held-out 5,000)
    n_test: int | None  # test images (None: all 10,000)
    batch_size: int
    vit: dict[str, Any]  # ModelConfig fields of the ViTs
    cnn: dict[str, Any]  # ModelConfig fields of the CNN
    train: TrainConfig
    augment: bool = False  # random shifts of up to 2 pixels and horizontal flips (shift_flip), every model
    label_smoothing: float = 0.0  # of the training cross-entropy, every model


PRESETS = {
    "quick": Preset(6000, 500, 1000, 64, dict(d_model=32, layers=2, heads=2, ff=64, local_layers=1, stem=(8, 16)),
                    dict(channels=(8, 16)),
                    TrainConfig(max_steps=150, budget_seconds=20, lr=3e-3, warmup_steps=20, eval_every=50,
                                progress=False)),
    "full": Preset(None, N_VALID, None, 128, dict(d_model=64, layers=6, heads=4, ff=128, local_layers=3),
                   dict(channels=(32, 64)),
                   TrainConfig(max_steps=20000, budget_seconds=1620, lr=1e-3, weight_decay=0.05, warmup_steps=300,
                               eval_every=500, schedule="cosine", min_lr_ratio=0.02),
                   augment=True, label_smoothing=0.1),
}


def normalize(images: Tensor) -> Tensor:
    """``uint8 (N, 28, 28)`` -> normalised float ``(N, 1, 28, 28)``."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def load_splits(preset: Preset) -> dict[str, tuple[Tensor, Tensor]]:
    """Train / valid / test ``(images (N, 1, 28, 28) float, labels (N,))``."""
    images, labels = load_fashion_mnist("train")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    train_idx, valid_idx = order[:-N_VALID], order[-N_VALID:][: preset.n_valid]
    if preset.n_train is not None:
        train_idx = train_idx[: preset.n_train]
    test_images, test_labels = load_fashion_mnist("test")
    n_test = len(test_labels) if preset.n_test is None else preset.n_test
    return {"train": (normalize(images[train_idx]), labels[train_idx]),
            "valid": (normalize(images[valid_idx]), labels[valid_idx]),
            "test": (normalize(test_images[:n_test]), test_labels[:n_test])}


def shift_flip(x: Tensor, gen: torch.Generator, shift: int = 2) -> Tensor:
    """Augment a batch of normalised images ``(B, 1, H, W)``: each image shifted by up to ``shift``
    pixels along each axis (a random crop of the image padded with black) and flipped left-right
    half the time, all drawn from ``gen``. Returns a new ``(B, 1, H, W)`` tensor of the same dtype."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ShapeError(f"images must be (B, 1, H, W); got shape {tuple(x.shape)}")
    if shift < 0:
        raise AttnKitError(f"shift must be >= 0 pixels; got {shift}")
    b, _, h, w = x.shape
    pad = F.pad(x, (shift,) * 4, value=-MEAN / STD)  # (B, 1, H + 2s, W + 2s), padding = black
    dy, dx = (torch.randint(0, 2 * shift + 1, (b,), generator=gen) for _ in range(2))
    rows = (dy.view(-1, 1) + torch.arange(h)).view(b, h, 1)  # (B, H, 1)
    cols = (dx.view(-1, 1) + torch.arange(w)).view(b, 1, w)  # (B, 1, W)
    out = pad[torch.arange(b).view(-1, 1, 1), 0, rows, cols].unsqueeze(1)  # (B, 1, H, W)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)


def _batches(images: Tensor, labels: Tensor, batch_size: int, augment: bool):
    def make(gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i: i + batch_size]
            x = images[idx]
            yield (shift_flip(x, gen) if augment else x), labels[idx]

    return make


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor], label_smoothing: float = 0.0) -> tuple[Tensor, int]:
    x, y = batch
    return F.cross_entropy(model(x), y, label_smoothing=label_smoothing), len(y)


def predict(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Class probabilities ``(N, C)`` of normalised ``images (N, 1, 28, 28)``."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(images[i: i + batch_size]).softmax(-1))
    return torch.cat(out)


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return float((predict(model, images).argmax(-1) == labels).float().mean())


def _model_config(kind: str, preset: Preset) -> ModelConfig:
    return ModelConfig(kind=kind, **(preset.cnn if kind == "cnn" else preset.vit))


def train(*, data: str = "fashion-mnist", model: str = "vit", quick: bool = False,
          budget_minutes: float | None = None, max_steps: int | None = None, eval_every: int | None = None,
          out: str | Path | None = None, seed: int = 0, progress: bool = True, resume: bool = False,
          log: Callable[[str], None] = print) -> tuple[RunFolder, dict[str, Any]]:
    """Train one classifier and evaluate it on the test set; returns the run folder and its results."""
    if model not in MODELS:
        raise AttnKitError(f"--model {model!r} is not known; expected one of {', '.join(MODELS)}")
    if data != "fashion-mnist":
        raise AttnKitError(f"--data {data!r} is not available; expected fashion-mnist")
    preset = PRESETS["quick" if quick else "full"]
    cfg = preset.train.overridden(seed=seed, progress=progress, metric="accuracy",
                                  budget_minutes=budget_minutes, max_steps=max_steps, eval_every=eval_every)
    RunFolder.refuse_existing(out, resume)
    t0 = time.perf_counter()
    splits = load_splits(preset)
    run = RunFolder.create(TASK, model, out)
    torch.manual_seed(seed)
    mcfg = _model_config(model, preset)
    net = build_model(mcfg)
    n_params = sum(p.numel() for p in net.parameters())
    write_json(run / "config.json", {"task": TASK, "data": data, "preset": "quick" if quick else "full",
                                     "model": mcfg.to_dict(), "train": asdict(cfg), "batch_size": preset.batch_size,
                                     "augment": preset.augment, "label_smoothing": preset.label_smoothing,
                                     "sizes": {k: len(v[1]) for k, v in splits.items()},
                                     "parameters": n_params})
    valid_x, valid_y = splits["valid"]

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"accuracy": _accuracy(m, valid_x, valid_y)}

    trainer = Trainer(net, cfg, run, batches=_batches(*splits["train"], preset.batch_size, preset.augment),
                      loss_fn=partial(_loss, label_smoothing=preset.label_smoothing), evaluate=evaluate)
    return trainer.fit_and_evaluate(f"{model} on {data}: {len(splits['train'][1])} images, {n_params:,} parameters",
                                    evaluate_run, started=t0, resume=resume, log=log, splits=splits)


@dataclass
class LoadedRun:
    """A trained classifier with its configuration."""

    run: RunFolder
    config: dict[str, Any]
    model: nn.Module


def load_run(path: str | Path) -> LoadedRun:
    """The model of a run folder, in eval mode, with the best weights."""
    run, config = RunFolder.open_task(path, TASK)
    model = build_model(ModelConfig(**config["model"]))
    model.load_state_dict(load_weights(run / "model.safetensors"))
    return LoadedRun(run, config, model.eval())


def evaluate_run(path: str | Path | RunFolder, *, log: Callable[[str], None] = print,
                 train_result: TrainResult | None = None, setup_seconds: float | None = None,
                 splits: dict[str, tuple[Tensor, Tensor]] | None = None, pictures: bool = True) -> dict[str, Any]:
    """Evaluate a run on its held-out test set; writes ``results.json`` (and pictures) and returns it."""
    from sklearn.metrics import accuracy_score, f1_score

    lr = load_run(path.path if isinstance(path, RunFolder) else path)
    run, config = lr.run, lr.config
    preset = PRESETS[config["preset"]]
    splits = load_splits(preset) if splits is None else splits
    test_x, test_y = splits["test"]
    t0 = time.perf_counter()
    pred = predict(lr.model, test_x).argmax(-1)
    seconds = time.perf_counter() - t0
    y, p = test_y.numpy(), pred.numpy()
    train_y = splits["train"][1]
    majority = int(torch.bincount(train_y, minlength=len(CLASSES)).argmax())
    state = read_json(run / "trainer_state.json") if (run / "trainer_state.json").exists() else {}
    before = read_json(run / "results.json").get("train", {}) if (run / "results.json").exists() else {}
    evals = state.get("evals", [])
    reached = {}
    for th in THRESHOLDS:
        first = next((e for e in evals if e.get("accuracy", -1) >= th), None)
        reached[str(th)] = None if first is None else {"step": first["step"], "seconds": first["seconds"]}
    per_class = {name: float((p[y == c] == c).mean()) for c, name in enumerate(CLASSES) if (y == c).any()}
    results: dict[str, Any] = {
        "task": TASK, "data": config["data"], "model": config["model"]["kind"], "preset": config["preset"],
        "parameters": config["parameters"],
        "test": {"n": len(y), "accuracy": float(accuracy_score(y, p)),
                 "macro_f1": float(f1_score(y, p, average="macro")), "seconds": round(seconds, 3)},
        "per_class_accuracy": per_class,
        "baselines": {"majority-class": {"class": CLASSES[majority],
                                         "accuracy": float(accuracy_score(y, [majority] * len(y)))}},
        "train": {"steps": state.get("step"), "seconds": state.get("seconds"),
                  "images_per_second": (state["items"] / state["seconds"]) if state.get("seconds") else None,
                  "best_valid_accuracy": state.get("best"), "best_step": state.get("best_step"),
                  "stopped": before.get("stopped") if train_result is None else train_result.stopped,
                  "setup_seconds": before.get("setup_seconds") if setup_seconds is None else round(setup_seconds, 2)},
        "time_to_valid_accuracy": reached,
    }
    if pictures and isinstance(lr.model, ViT):
        from .pictures_vit import rollout_grid

        results["pictures"] = [rollout_grid(lr.model, test_x[:8], test_y[:8], run / "rollout.png").name]
    write_json(run / "results.json", results)
    log(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    """The results of one run as a few printable lines."""
    t, tr, base = results["test"], results["train"], results["baselines"]["majority-class"]
    reached = ", ".join(f"{float(k):.0%}: " + (f"step {v['step']} ({v['seconds']:.0f} s)" if v else "not reached")
                        for k, v in results["time_to_valid_accuracy"].items())
    lines = [f"{results['model']} on {results['data']} ({results['parameters']:,} parameters), test n={t['n']}: "
             f"accuracy {100 * t['accuracy']:.2f}%  macro-F1 {100 * t['macro_f1']:.2f}"
             + (f"  ({tr['steps']} steps, {tr['seconds']:.0f} s)" if tr.get("seconds") else ""),
             f"  baseline majority class ({base['class']}): accuracy {100 * base['accuracy']:.1f}%",
             f"  first validation accuracy of {reached}"]
    if results.get("pictures"):
        lines.append(f"  pictures: {', '.join(results['pictures'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# classifying one picture file
# ----------------------------------------------------------------------------------------------

MIN_SIDE, MAX_SIDE = 28, 4096  # accepted picture sides, in pixels


def read_image(path: str | Path) -> tuple[Tensor, bool]:
    """A picture file as a Fashion-MNIST-like image: ``(28, 28)`` float in [0, 1], light item on a
    dark background, and whether it was inverted to get there.

    Colour is turned to grey (luminance), transparency composited over white, a non-square picture
    padded to a square with its border colour, then shrunk to 28 x 28 by area averaging. A picture
    whose border is mostly light (a dark item on a light background) is inverted. Unreadable
    files, sides outside 28 .. 4096 pixels and channel counts other than 1 to 4 raise an
    :class:`AttnKitError` naming the file.
    """
    import matplotlib.image as mpimg
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise AttnKitError(f"IMAGE {str(path)!r} does not exist; expected a picture file (PNG)")
    try:
        arr = np.asarray(mpimg.imread(path))
    except Exception as exc:  # matplotlib / PIL raise many kinds for a bad file
        raise AttnKitError(f"IMAGE {str(path)!r} cannot be read as a picture ({type(exc).__name__}: "
                           f"{str(exc)[:80]}); expected a PNG file") from None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        got = f"{arr.shape[2]} channels" if arr.ndim == 3 else f"{arr.ndim} dimensions"
        raise AttnKitError(f"IMAGE {str(path)!r} has {got} (shape {arr.shape}); expected grey, grey + alpha, RGB or "
                           "RGBA (1 to 4 channels)")
    h, w = arr.shape[:2]
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise AttnKitError(f"IMAGE {str(path)!r} is {w} x {h} pixels; expected each side in {MIN_SIDE} .. {MAX_SIDE}")
    x = torch.as_tensor(arr.astype(np.float32))
    if arr.dtype.kind in "ui":
        x = x / float(np.iinfo(arr.dtype).max)
    if x.dim() == 2:
        x = x.unsqueeze(-1)
    c = x.shape[-1]
    alpha = x[..., -1] if c in (2, 4) else torch.ones(h, w)
    colour = x[..., : 3 if c >= 3 else 1]
    grey = colour @ torch.tensor([0.299, 0.587, 0.114]) if colour.shape[-1] == 3 else colour[..., 0]  # (h, w)
    grey = grey * alpha + (1 - alpha)  # over white
    if not torch.isfinite(grey).all():
        raise AttnKitError(f"IMAGE {str(path)!r} has non-finite pixel values; expected a picture")
    border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    inverted = bool(border.mean() > 0.5)
    if inverted:
        grey, border = 1 - grey, 1 - border
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = torch.full((side, side), float(border.mean()))
    square[top: top + h, left: left + w] = grey
    small = F.interpolate(square.view(1, 1, side, side), size=(28, 28), mode="area")[0, 0]
    return small.clamp(0, 1), inverted


def classify_image(model: nn.Module, image: Tensor) -> Tensor:
    """Class probabilities ``(C,)`` of one image ``(28, 28)`` in [0, 1] (light item, dark background)."""
    x = ((image - MEAN) / STD).view(1, 1, *image.shape)
    return predict(model, x)[0]
