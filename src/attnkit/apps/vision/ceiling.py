"""How far item recognition caps a captioner's relation accuracy.

A caption's ``(a, relation, b)`` triple counts as right only when both classes it names are in the
scene (:func:`scenes.relation_scores`), so a captioner that reads every position exactly still
loses each triple that touches an item it misreads. This module measures that cap: it writes each
test scene's caption from the scene's *true boxes* (every relation right by construction) and the
item classes that a trained Fashion-MNIST classifier (a run of ``attnkit train vit``) gives, then
scores those captions as the captioners' are scored.

Each item is read three ways:

* ``labels``: the true classes (a check: relation accuracy must be 1);
* ``source``: the item's own 28 x 28 Fashion-MNIST test image, as the classifier was trained to see
  it (an upper bound: the scene shows the item smaller);
* ``canvas``: the item cut from the scene at its box, scaled so that its longer side is 28 pixels
  (aspect kept; 88% of Fashion-MNIST items span the full 28 pixels), centred on a black 28 x 28
  square: what the scene actually shows, brought to the classifier's framing.

A scene's classes are distinct by construction, so each reading is scored twice: each item's most
probable class (``argmax``), and the most probable assignment of distinct classes to the scene's
items (``distinct``, :func:`scipy.optimize.linear_sum_assignment` on the negative log
probabilities), which a captioner can also learn from its training captions.

Shape legend: N scenes, K items in a scene, C classes, S canvas side.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import write_json
from .classify import load_run, normalize, predict
from .common import load_scenes
from .data import CLASSES, load_fashion_mnist
from .scenes import SPLITS, Scene, describe, relation_scores

__all__ = ["READINGS", "canvas_items", "distinct_labels", "item_probabilities", "ceiling_captions", "ceiling",
           "summary", "main"]

READINGS = ("labels", "source", "canvas")
SIDE = 28  # Fashion-MNIST's frame


def canvas_items(scene: Scene) -> Tensor:
    """The scene's items cut at their boxes and framed as Fashion-MNIST frames its items:
    ``uint8 (K, 28, 28)``, each item's longer side 28 pixels (bilinear, antialiased), centred."""
    out = torch.zeros(len(scene.boxes), SIDE, SIDE, dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(scene.boxes.round().long().tolist()):
        crop = scene.image[y0:y1, x0:x1].float()
        h, w = crop.shape
        f = SIDE / max(h, w)
        nh, nw = max(1, min(SIDE, round(h * f))), max(1, min(SIDE, round(w * f)))
        big = F.interpolate(crop[None, None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (SIDE - nh) // 2, (SIDE - nw) // 2
        out[k, top: top + nh, left: left + nw] = big[0, 0].round().clamp(0, 255).to(torch.uint8)
    return out


def distinct_labels(log_probs: Tensor) -> Tensor:
    """``(K,)`` the most probable assignment of distinct classes to ``K`` items, given their
    ``log_probs (K, C)`` (K <= C): the assignment that maximises the summed log probability."""
    from scipy.optimize import linear_sum_assignment

    if log_probs.dim() != 2 or log_probs.shape[0] > log_probs.shape[1]:
        raise AttnKitError(f"log_probs must be (K, C) with K <= C; got shape {tuple(log_probs.shape)}")
    rows, cols = linear_sum_assignment((-log_probs).double().numpy())
    out = torch.empty(len(rows), dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out


def item_probabilities(model: torch.nn.Module, scenes: Sequence[Scene], reading: str) -> list[Tensor]:
    """Per scene, the classifier's class probabilities ``(K, C)`` of its items read as ``reading``
    (``"source"`` or ``"canvas"``; see the module docstring)."""
    if reading == "source":
        source_images, _ = load_fashion_mnist(SPLITS[scenes[0].split][0])
        items = [source_images[s.sources] for s in scenes]
    elif reading == "canvas":
        items = [canvas_items(s) for s in scenes]
    else:
        raise AttnKitError(f"reading {reading!r} has no images; expected 'source' or 'canvas'")
    probs = predict(model, normalize(torch.cat(items)))
    return list(probs.split([len(s.labels) for s in scenes]))


def ceiling_captions(scenes: Sequence[Scene], labels: Sequence[Tensor]) -> list[str]:
    """Captions from the scenes' true boxes with ``labels`` (one ``(K,)`` per scene); a class given
    to two items is named twice, and the scorer then finds at most one of them."""
    return [describe(s.boxes, [CLASSES[int(c)] for c in lab]) for s, lab in zip(scenes, labels)]


def ceiling(run: str | Path, *, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Relation accuracy, relation precision, item F1 and item accuracy of captions written from the
    true boxes of ``n`` test scenes and the items as classifier ``run`` reads them (every reading,
    ``argmax`` and ``distinct``)."""
    if not isinstance(n, int) or n < 1:
        raise AttnKitError(f"n must be a positive int; got {n!r}")
    lr = load_run(run)
    scenes = load_scenes("test", n, seed=seed)
    truth = torch.cat([s.labels for s in scenes])
    out: dict[str, Any] = {"run": str(lr.run.path), "model": lr.config["model"]["kind"], "n": n,
                           "items": int(len(truth)), "readings": {}}
    out["readings"]["labels"] = {"argmax": {**relation_scores(ceiling_captions(scenes, [s.labels for s in scenes]),
                                                              scenes), "item_accuracy": 1.0}}
    for reading in ("source", "canvas"):
        probs = item_probabilities(lr.model, scenes, reading)
        res = {}
        for rule, pick in (("argmax", lambda p: p.argmax(-1)), ("distinct", lambda p: distinct_labels(p.log()))):
            labels = [pick(p) for p in probs]
            acc = float((torch.cat(labels) == truth).float().mean())
            res[rule] = {**relation_scores(ceiling_captions(scenes, labels), scenes), "item_accuracy": acc}
        out["readings"][reading] = res
    return out


def summary(res: dict[str, Any]) -> str:
    """The ceiling as a small table."""
    lines = [f"relation-accuracy ceiling from {res['model']} ({res['run']}), {res['n']} test scenes, "
             f"{res['items']} items; captions from the true boxes:",
             "reading   rule      item acc  relation acc  item F1"]
    for reading, rules in res["readings"].items():
        for rule, r in rules.items():
            lines.append(f"{reading:<9} {rule:<9} {100 * r['item_accuracy']:7.2f}%  "
                         f"{100 * r['relation_accuracy']:11.2f}%  {100 * r['item_f1']:6.2f}%")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m attnkit.apps.vision.ceiling",
                                 description="how far item recognition caps captioning's relation accuracy")
    ap.add_argument("runs", nargs="+", help="classifier runs of `attnkit train vit`")
    ap.add_argument("-n", type=int, default=2000, help="test scenes (default 2000, the captioners' test set)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        results = [ceiling(r, n=a.n) for r in a.runs]
    except AttnKitError as e:  # a command-line mistake: one error line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(summary(r))
    if a.out:
        write_json(a.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
