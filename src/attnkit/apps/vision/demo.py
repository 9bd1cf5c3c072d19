"""``attnkit demo vision``: the quick captioner and the quick DETR detector (each trained once and
cached under ``$ATTNKIT_CACHE/runs/``) on one held-out scene: its caption, its boxes, and where
the models looked (each word's and each object query's cross-attention)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..trainer import cache_dir
from . import caption, classify, detect
from .common import load_scenes, write_image
from .data import CLASSES

__all__ = ["cached_path", "cached_run", "run_demo"]


_RUNS = {"vit": (classify, "vit-quick", "vit"), "caption": (caption, "caption-attention-quick", "attention"),
         "detect": (detect, "detect-detr-quick", "detr")}


def cached_path(task: str) -> Path:
    """Where the quick run of ``task`` is cached under ``$ATTNKIT_CACHE/runs/`` (trained or not)."""
    return cache_dir("runs") / _RUNS[task][1]


def cached_run(task: str, log: Callable[[str], None] = print) -> Path:
    """The cached quick run of ``task`` (``"vit"``: the ViT classifier, ``"caption"``: the attention
    captioner, ``"detect"``: DETR) under ``$ATTNKIT_CACHE/runs/``, trained now if missing."""
    module, _, model = _RUNS[task]
    path = cached_path(task)
    if not (path / "results.json").exists():
        if path.exists():  # an unfinished earlier attempt (the folder is the cache's own)
            shutil.rmtree(path)
        log(f"training the quick {model} model (once; cached in {path}) ...")
        module.train(model=model, quick=True, out=path, progress=False, log=lambda *_: None)
    return path


def run_demo(out: str | Path, log: Callable[[str], None] = print, scene_index: int = 0,
             threshold: float = 0.3) -> list[Path]:
    """Caption and detect one held-out scene; write the scene (``<out stem>-scene.png``), the
    caption's attention (``out``) and the detections' attention (``<out stem>-detect.png``)."""
    cap_path, det_path = cached_run("caption", log), cached_run("detect", log)
    cap, det = caption.load_run(cap_path), detect.load_run(det_path)
    scenes = [s for s in load_scenes("test", 300) if len(s.labels) >= 3]
    scene = scenes[scene_index % len(scenes)]
    out = Path(out)
    made = [write_image(scene.image, out.with_name(f"{out.stem}-scene.png"))]
    log(f"held-out scene: {', '.join(scene.names)} (written to {made[0]})")
    log(f"  true caption:      {scene.caption}")
    text = caption.caption_images(cap.model, cap.vocab, scene.image[None, None].float() / 255.0)[0]
    log(f"  generated caption: {text}")
    pic = caption.caption_picture(cap, scene.image, out, caption=text)
    if pic is not None:
        made.append(pic)
    det_pic, (boxes, labels, scores) = detect.detection_picture(det, scene.image, out.with_name(f"{out.stem}-detect"
                                                                                                  f"{out.suffix}"),
                                                                threshold=threshold, truth=scene.boxes)
    made.append(det_pic)
    for box, label in zip(scene.boxes.tolist(), scene.labels.tolist()):
        log(f"  true box  {CLASSES[label]:<11s} {[round(v) for v in box]}")
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        log(f"  detected  {CLASSES[label]:<11s} {[round(v) for v in box]}  score {score:.2f}")
    if len(labels) == 0:
        log(f"  detected  nothing scored above {threshold}")
    log("pictures: " + ", ".join(str(m) for m in made))
    log(f"try: attnkit caption {cap_path} {made[0]} --out caption.png;  attnkit detect {det_path} {made[0]} "
        "--out detect.png")
    return made
