"""The detection task end to end: scenes, the detectors of :mod:`.detector` trained with the
shared trainer, mAP@0.5 and mAP@[.5:.95] with pycocotools on held-out scenes (trivial baseline:
every class at the mean training box, scored by class frequency), pictures of each detected
object with the decoder's cross-attention, and detecting on a new canvas from a run.

Presets: ``quick`` (the test suite's size: well under a minute on 2 cores) and ``full``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError
from ..trainer import RunFolder, TrainConfig, TrainResult, load_weights, read_json, write_json
from .common import SceneModel, ScenePreset, load_scenes, time_to_thresholds, train_on_scenes
from .data import CLASSES
from .detector import DETECT_MODELS, DetectConfig, build_detector
from .scenes import Scene, stack_images

__all__ = ["TASK", "MODELS", "Preset", "PRESETS", "THRESHOLDS", "coco_map", "train", "LoadedRun", "load_run",
           "detect_images", "evaluate_run", "detection_picture", "summary"]

TASK = "detect"
MODELS = DETECT_MODELS
METRIC = "map50"
THRESHOLDS = (0.3, 0.5, 0.6)  # validation mAP@0.5 levels whose first step and second are reported
Detections = list[tuple[Tensor, Tensor, Tensor]]


Preset = ScenePreset

PRESETS = {
    "quick": Preset(2000, 150, 300, 32, dict(d_model=64, enc_layers=1, dec_layers=2, heads=4, ff=128),
                    TrainConfig(max_steps=300, budget_seconds=120, lr=2e-3, warmup_steps=30, eval_every=100,
                                metric=METRIC, progress=False)),
    "full": Preset(20000, 400, 2000, 32, dict(d_model=96, enc_layers=2, dec_layers=3, heads=4, ff=192),
                   TrainConfig(max_steps=30000, budget_seconds=25 * 60, lr=1e-3, warmup_steps=200, eval_every=500,
                               metric=METRIC)),
}


def coco_map(detections: Detections, scenes: Sequence[Scene]) -> dict[str, float]:
    """``map50`` (mAP at IoU 0.5) and ``map`` (mean over IoU 0.5:0.95) with pycocotools' COCOeval
    (boxes in pixels, every area range, up to 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(scenes) or not scenes:
        raise AttnKitError(f"coco_map needs detections for every scene (> 0); got {len(detections)} for "
                           f"{len(scenes)} scenes")
    images, annotations, results = [], [], []
    for i, (scene, (boxes, labels, scores)) in enumerate(zip(scenes, detections)):
        side = scene.image.shape[-1]
        images.append({"id": i, "width": side, "height": side})
        for box, label in zip(scene.boxes.tolist(), scene.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            results.append({"image_id": i, "category_id": label + 1, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not results:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": max(0.0, float(ev.stats[1])), "map": max(0.0, float(ev.stats[0]))}


def _targets(scenes: Sequence[Scene]) -> list[dict[str, Tensor]]:
    return [{"boxes": s.boxes, "labels": s.labels} for s in scenes]


def _batches(images: Tensor, targets: list[dict[str, Tensor]], batch_size: int):
    def make(gen: torch.Generator) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i: i + batch_size]
            yield images[idx], [targets[j] for j in idx.tolist()]

    return make


def _loss(model: nn.Module, batch: tuple[Tensor, list[dict[str, Tensor]]]) -> tuple[Tensor, int]:
    images, targets = batch
    return model.loss(model(images), targets), len(images)


@torch.no_grad()
def detect_images(model: nn.Module, images: Tensor, *, threshold: float = 0.0, batch_size: int = 256) -> Detections:
    """Detections ``(boxes (K, 4) xyxy pixels, labels (K,), scores (K,))`` for each of ``images (B, 1, S, S)``."""
    model.eval()
    out: Detections = []
    for i in range(0, len(images), batch_size):
        out.extend(model.detect(images[i: i + batch_size], threshold))
    return out


def _prior_baseline(train_scenes: Sequence[Scene]) -> dict[str, Any]:
    """Every class at the mean training box, scored by the class's share of training objects."""
    boxes = torch.cat([s.boxes for s in train_scenes])
    labels = torch.cat([s.labels for s in train_scenes])
    freq = torch.bincount(labels, minlength=len(CLASSES)).float() / len(labels)
    return {"box": [round(v, 2) for v in boxes.mean(0).tolist()], "class_freq": [round(v, 4) for v in freq.tolist()]}


def _prior_detections(prior: dict[str, Any], n: int) -> Detections:
    box = torch.tensor(prior["box"]).expand(len(CLASSES), 4)
    return [(box, torch.arange(len(CLASSES)), torch.tensor(prior["class_freq"])) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def train(*, data: str = "scenes", model: str = "detr", quick: bool = False,
          budget_minutes: float | None = None, max_steps: int | None = None, eval_every: int | None = None,
          target: float | None = None, out: str | Path | None = None, seed: int = 0, progress: bool = True,
          resume: bool = False, log: Callable[[str], None] = print) -> tuple[RunFolder, dict[str, Any]]:
    """Train one detector and evaluate it on held-out scenes; returns the run folder and its results."""
    if data != "scenes":
        raise AttnKitError(f"--data {data!r} is not available for detection; expected scenes")
    if model not in MODELS:
        raise AttnKitError(f"--model {model!r} is not known; expected one of {', '.join(MODELS)}")

    def setup(train_scenes: list[Scene], valid: list[Scene]) -> SceneModel:
        mcfg = DetectConfig(kind=model, **preset.model)
        net = build_detector(mcfg)
        valid_images = stack_images(valid)

        def evaluate(m: nn.Module) -> dict[str, float]:
            return {k: round(v, 5) for k, v in coco_map(detect_images(m, valid_images), valid).items()}

        batches = _batches(stack_images(train_scenes), _targets(train_scenes), preset.batch_size)
        return SceneModel(net, mcfg.to_dict(), {"prior": _prior_baseline(train_scenes)}, batches, _loss, evaluate)

    preset = PRESETS["quick" if quick else "full"]
    return train_on_scenes(TASK, "detector", data=data, model=model, preset=preset, quick=quick, setup=setup,
                           evaluate_run=evaluate_run, budget_minutes=budget_minutes, max_steps=max_steps,
                           eval_every=eval_every, target=target, out=out, seed=seed, progress=progress,
                           resume=resume, log=log)


# ----------------------------------------------------------------------------------------------
# a finished run
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained detector with its configuration."""

    run: RunFolder
    config: dict[str, Any]
    model: nn.Module

    @property
    def side(self) -> int:
        """The canvas side the model reads."""
        return self.model.config.image


def load_run(path: str | Path) -> LoadedRun:
    """The detector of a run folder, in eval mode, with the best weights."""
    run, config = RunFolder.open_task(path, TASK)
    model = build_detector(DetectConfig(**config["model"]))
    model.load_state_dict(load_weights(run / "model.safetensors"))
    return LoadedRun(run, config, model.eval())


def detection_picture(lr: LoadedRun, image: Tensor, path: str | Path, *, threshold: float = 0.5,
                      truth: Tensor | None = None) -> tuple[Path, tuple[Tensor, Tensor, Tensor]]:
    """The detections above ``threshold`` on a canvas ``(S, S)`` uint8 and, for DETR, each one's
    decoder cross-attention (last layer, mean of heads): the picture and the detections."""
    from .scene_pictures import detection_attention

    x = image[None, None].float() / 255.0
    model = lr.model
    model.eval()
    weights = None
    if lr.config["model"]["kind"] == "detr":
        out = model(x)
        prob = out["logits"][-1, 0].softmax(-1)[:, :-1]  # (Q, C)
        scores, labels = prob.max(-1)
        keep = (scores > threshold).nonzero().flatten()
        keep = keep[scores[keep].argsort(descending=True)]
        from .boxes import cxcywh_to_xyxy

        boxes = cxcywh_to_xyxy(out["boxes"][-1, 0, keep]).clamp(0, 1) * lr.side
        weights = model.query_attention(x)[0, keep]  # (K, N)
        det = (boxes.detach(), labels[keep], scores[keep].detach())
    else:
        det = model.detect(x, threshold)[0]
    kind = lr.config["model"]["kind"]
    title = f"{kind}: {len(det[1])} objects above {threshold}" + (
        " (each query's cross-attention, last layer, mean of heads)" if weights is not None else "")
    return detection_attention(image, *det, weights, path, title=title, truth=truth), det


def evaluate_run(path: str | Path | RunFolder, *, log: Callable[[str], None] = print,
                 train_result: TrainResult | None = None, setup_seconds: float | None = None,
                 pictures: bool = True) -> dict[str, Any]:
    """Evaluate a run on its held-out test scenes; writes ``results.json`` (and pictures) and returns it."""
    run = path if isinstance(path, RunFolder) else RunFolder(path)
    lr = load_run(run.path)
    test = load_scenes("test", lr.config["sizes"]["test"])
    dets = detect_images(lr.model, stack_images(test))
    before = read_json(run / "results.json") if (run / "results.json").exists() else {}
    evals = train_result.evals if train_result is not None else [
        {k: v for k, v in r.items() if k != "event"} for r in run.metrics() if r.get("event") == "eval"]
    bt = before.get("train", {})
    results: dict[str, Any] = {
        "task": TASK, "model": lr.config["model"]["kind"], "preset": lr.config["preset"],
        "parameters": lr.config["parameters"],
        "test": {"n": len(test), "objects": sum(len(s.labels) for s in test), **coco_map(dets, test)},
        "baselines": {"class-prior-mean-box": coco_map(_prior_detections(lr.config["prior"], len(test)), test)},
        "train": {"steps": train_result.steps if train_result else bt.get("steps"),
                  "seconds": round(train_result.seconds, 1) if train_result else bt.get("seconds"),
                  "stopped": train_result.stopped if train_result else bt.get("stopped"),
                  "setup_seconds": round(setup_seconds, 1) if setup_seconds is not None else bt.get("setup_seconds")},
        f"time_to_valid_{METRIC}": time_to_thresholds(evals, METRIC, THRESHOLDS),
    }
    if pictures:
        made = []
        for i, s in enumerate([s for s in test if len(s.labels) >= 3][:2]):
            p, _ = detection_picture(lr, s.image, run / f"attention-{i}.png", truth=s.boxes)
            made.append(p.name)
        results["pictures"] = made
    write_json(run / "results.json", results)
    log(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    """The results of one run as a few printable lines."""
    t, tr = results["test"], results["train"]
    lines = [f"{results['model']} detector, held-out scenes n={t['n']} ({t['objects']} objects): "
             f"mAP@0.5 {t['map50']:.3f}  mAP@[.5:.95] {t['map']:.3f}"
             + (f"  ({tr['steps']} steps, {tr['seconds']:.0f} s)" if tr.get("seconds") else "")]
    for name, b in results["baselines"].items():
        lines.append(f"  baseline {name}: mAP@0.5 {b['map50']:.3f}  mAP@[.5:.95] {b['map']:.3f}")
    reach = results[f"time_to_valid_{METRIC}"]
    lines.append("  validation mAP@0.5 first reached: " + ", ".join(
        f"{t}: " + (f"step {r['step']} ({r['seconds']:.0f} s)" if r else "not reached") for t, r in reach.items()))
    return "\n".join(lines)
