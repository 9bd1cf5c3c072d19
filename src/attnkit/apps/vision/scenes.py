"""Scenes built from real Fashion-MNIST items: a grey canvas with 1 to 4 items of distinct
classes at random positions and scales, their boxes and classes, and a caption that states the
items and how they lie relative to each other.

Sources. Training scenes take their items from Fashion-MNIST training images 0..54,999,
validation scenes from training images 55,000..59,999, test scenes from the 10,000 test images:
the three splits never share a source item.

Items. Each item is cropped to its ink (pixels above :data:`INK`), scaled with its aspect kept so
that its longer side is ``min_scale..max_scale`` pixels, and pasted at a random position; its box
``(x0, y0, x1, y1)`` (pixels, ``x1``/``y1`` exclusive) is exactly the pasted rectangle, so it lies
inside the canvas. Boxes keep a gap of at least ``gap`` pixels between each other.

Relations. With box centres ``(ax, ay)`` of item a and ``(bx, by)`` of item b (y grows downwards),
``dx = bx - ax`` and ``dy = by - ay``, :func:`relation` ``(a, b)`` is::

    "to the left of"   if dx > 0 and |dx| >= 2 |dy|       (a lies left of b)
    "to the right of"  if dx < 0 and |dx| >= 2 |dy|
    "above"            if dy > 0 and |dy| >= 2 |dx|
    "below"            if dy < 0 and |dy| >= 2 |dx|
    None               otherwise (a diagonal placement: ambiguous)

Captions. Items are read left to right by box centre (the generator keeps centres at least
``min_dx`` pixels apart in x). One item: ``"a sneaker"``. Two or more: the first clause relates
the first item to the second, each further clause relates the next item to the one before it::

    "a sneaker to the left of a bag, a shirt below the bag"

The generator redraws a placement until every related pair has a relation (no ambiguous pair is
ever described), so the caption is a function of the boxes: :func:`caption_of`.
:func:`parse_caption` reads a caption (or a model's output) back into items and
``(item, relation, item)`` triples; :func:`relation_scores` checks triples against the boxes.

Shape legend: N scenes, K items in a scene, S canvas side.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AttnKitError, ShapeError
from .data import CLASSES, load_fashion_mnist

__all__ = ["INK", "RELATIONS", "SPLITS", "SceneConfig", "Scene", "make_scenes", "relation", "caption_of",
           "describe", "parse_caption", "relation_scores", "stack_images", "article"]

INK = 20  # a Fashion-MNIST pixel above this grey level belongs to the item
RELATIONS = ("to the left of", "to the right of", "above", "below")
SPLITS = {"train": ("train", 0, 55000), "valid": ("train", 55000, 60000), "test": ("test", 0, 10000)}
_SEED_OFFSET = {"train": 0, "valid": 1_000_003, "test": 2_000_003}


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn."""

    size: int = 64  # canvas side S (pixels)
    min_items: int = 1
    max_items: int = 4
    min_scale: int = 16  # longer side of an item, pixels
    max_scale: int = 26
    gap: int = 2  # free pixels between any two boxes
    min_dx: float = 4.0  # least difference of box-centre x between two items (reading order)

    def __post_init__(self) -> None:
        if self.size < 64:
            raise AttnKitError(f"SceneConfig.size must be >= 64; got {self.size}")
        if not 1 <= self.min_items <= self.max_items <= len(CLASSES):
            raise AttnKitError(f"SceneConfig needs 1 <= min_items <= max_items <= {len(CLASSES)}; got "
                               f"{self.min_items}..{self.max_items}")
        if not 4 <= self.min_scale <= self.max_scale <= self.size // 2:
            raise AttnKitError(f"SceneConfig needs 4 <= min_scale <= max_scale <= size/2; got "
                               f"{self.min_scale}..{self.max_scale} for size {self.size}")


@dataclass(frozen=True)
class Scene:
    """One canvas: ``image (S, S)`` uint8, ``boxes (K, 4)`` float xyxy pixels, ``labels (K,)``
    class ids, ``sources (K,)`` indices of the items in their Fashion-MNIST split, and the caption."""

    image: Tensor
    boxes: Tensor
    labels: Tensor
    sources: Tensor
    caption: str
    split: str = field(default="train")

    @property
    def names(self) -> list[str]:
        """Class names of the items, in box order."""
        return [CLASSES[int(c)] for c in self.labels]


def article(name: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if name[0] in "aeiou" else "a"


def relation(box_a: Sequence[float] | Tensor, box_b: Sequence[float] | Tensor) -> str | None:
    """Where box a lies relative to box b (see the module docstring), or None when ambiguous.

    >>> relation([0, 0, 10, 10], [30, 2, 40, 12])
    'to the left of'
    >>> relation([0, 30, 10, 40], [2, 0, 12, 10])
    'below'
    >>> relation([0, 0, 10, 10], [20, 20, 30, 30]) is None
    True
    """
    ax, ay = (float(box_a[0]) + float(box_a[2])) / 2, (float(box_a[1]) + float(box_a[3])) / 2
    bx, by = (float(box_b[0]) + float(box_b[2])) / 2, (float(box_b[1]) + float(box_b[3])) / 2
    dx, dy = bx - ax, by - ay
    if abs(dx) >= 2 * abs(dy) and dx != 0:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) >= 2 * abs(dx) and dy != 0:
        return "above" if dy > 0 else "below"
    return None


def _order(boxes: Tensor) -> list[int]:
    """Item indices left to right by box centre x (then top to bottom)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return sorted(range(len(boxes)), key=lambda i: (float(cx[i]), float(cy[i])))


def caption_of(boxes: Tensor, labels: Tensor) -> str:
    """The caption of items with ``boxes (K, 4)`` and ``labels (K,)`` (classes distinct); an
    :class:`AttnKitError` when a pair it must describe is ambiguous."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1] or len(labels) == 0:
        raise ShapeError(f"caption_of needs boxes (K, 4) and labels (K,) with K >= 1; got {tuple(boxes.shape)} "
                         f"and {tuple(labels.shape)}")
    if len(set(labels.tolist())) != len(labels):
        raise AttnKitError(f"caption_of needs distinct classes; got {[CLASSES[int(c)] for c in labels]}")
    return describe(boxes, [CLASSES[int(c)] for c in labels])


def describe(boxes: Tensor, names: Sequence[str]) -> str:
    """The caption's clauses for items with ``boxes (K, 4)`` called ``names`` (which may repeat, as
    a reader that confuses two items would write them); :func:`caption_of` for a scene's own."""
    order = _order(boxes)
    if len(order) == 1:
        return f"{article(names[0])} {names[0]}"
    clauses = []
    for k in range(1, len(order)):
        a, b = (order[0], order[1]) if k == 1 else (order[k], order[k - 1])
        rel = relation(boxes[a], boxes[b])
        if rel is None:
            raise AttnKitError(f"items {names[a]} {boxes[a].tolist()} and {names[b]} "
                               f"{boxes[b].tolist()} are placed diagonally; expected a clear relation")
        na, nb = names[a], names[b]
        clauses.append(f"{article(na)} {na} {rel} {article(nb) if k == 1 else 'the'} {nb}")
    return ", ".join(clauses)


_NAME = "|".join(sorted((re.escape(c) for c in CLASSES), key=len, reverse=True))
_REL = "|".join(re.escape(r) for r in RELATIONS)
_TRIPLE = re.compile(rf"\b(?:a|an|the) ({_NAME}) ({_REL}) (?:a|an|the) ({_NAME})\b")
_ITEM = re.compile(rf"(?<![\w-])({_NAME})(?![\w-])")


def parse_caption(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The class names a caption mentions (in order, each once) and its ``(a, relation, b)``
    triples (one per comma-separated clause that has the form ``a|an|the A REL a|an|the B``).

    >>> parse_caption("a sneaker to the left of a bag, an ankle boot below the bag")
    (['sneaker', 'bag', 'ankle boot'], [('sneaker', 'to the left of', 'bag'), ('ankle boot', 'below', 'bag')])
    """
    items: list[str] = []
    for m in _ITEM.finditer(text):
        if m.group(1) not in items:
            items.append(m.group(1))
    triples = [(m[1], m[2], m[3]) for clause in text.split(",") if (m := _TRIPLE.search(clause.strip()))]
    return items, triples


def relation_scores(captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """How well captions describe their scenes, checked against the boxes.

    * ``relation_accuracy``: correct triples / max(triples stated, triples the scene's own caption
      has), summed over scenes; a triple is correct when both classes are in the scene and
      :func:`relation` of their boxes gives the stated relation (so a missing, extra or wrong triple
      all count against it). Scenes of one item have no triple and do not count.
    * ``relation_precision``: correct triples / triples stated.
    * ``item_f1``: F1 of the mentioned classes against the scene's classes.
    * ``exact``: the caption equals the scene's caption.
    """
    if len(captions) != len(scenes) or not scenes:
        raise AttnKitError(f"relation_scores needs one caption per scene (> 0); got {len(captions)} captions "
                           f"for {len(scenes)} scenes")
    correct = stated = needed = 0
    tp = n_pred = n_gold = exact = 0
    for text, scene in zip(captions, scenes):
        names = scene.names
        where = {n: scene.boxes[i] for i, n in enumerate(names)}
        items, triples = parse_caption(text)
        ok = sum(a in where and b in where and a != b and relation(where[a], where[b]) == rel for a, rel, b in triples)
        correct += ok
        stated += len(triples)
        needed += max(len(triples), len(names) - 1)
        tp += len(set(items) & set(names))
        n_pred += len(items)
        n_gold += len(names)
        exact += text.strip() == scene.caption
    precision, recall = tp / max(n_pred, 1), tp / n_gold
    return {"relation_accuracy": correct / needed if needed else 0.0,
            "relation_precision": correct / stated if stated else 0.0,
            "item_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "exact": exact / len(scenes)}


# ----------------------------------------------------------------------------------------------
# drawing scenes
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _source(split: str) -> tuple[Tensor, Tensor]:
    return load_fashion_mnist(split)


def _crop(item: Tensor) -> Tensor:
    """``item (28, 28)`` uint8 cut to the rows and columns holding ink."""
    ink = item > INK
    rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
    if len(rows) == 0:
        return item
    return item[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def _scaled_size(h: int, w: int, side: int) -> tuple[int, int]:
    """``(height, width)`` of an ``h x w`` item whose longer side becomes ``side``, aspect kept."""
    f = side / max(h, w)
    return max(2, round(h * f)), max(2, round(w * f))


def _scaled(item: Tensor, size: tuple[int, int]) -> Tensor:
    """``item (h, w)`` uint8 resized (bilinear, antialiased) to ``size``."""
    out = F.interpolate(item[None, None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].round().clamp(0, 255).to(torch.uint8)


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _draw(rng: random.Random, pool: Sequence[list[int]], images: Tensor, cfg: SceneConfig,
          split: str) -> Scene:
    """One scene: redraw the placement until it is unambiguous (classes and items are kept)."""
    k = rng.randint(cfg.min_items, cfg.max_items)
    classes = rng.sample(range(len(CLASSES)), k)
    sources = [rng.choice(pool[c]) for c in classes]
    crops = [_crop(images[s]) for s in sources]
    for _ in range(1000):
        sizes = [_scaled_size(*c.shape, rng.randint(cfg.min_scale, cfg.max_scale)) for c in crops]
        boxes: list[tuple[int, int, int, int]] = []
        for h, w in sizes:
            for _ in range(50):
                x, y = rng.randint(0, cfg.size - w), rng.randint(0, cfg.size - h)
                box = (x, y, x + w, y + h)
                if all(_apart(box, other, cfg.gap) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) < k:
            continue
        bt = torch.tensor(boxes, dtype=torch.float32)
        cx = sorted(((bt[:, 0] + bt[:, 2]) / 2).tolist())
        if any(b - a < cfg.min_dx for a, b in zip(cx, cx[1:])):
            continue
        labels = torch.tensor(classes, dtype=torch.long)
        try:
            caption = caption_of(bt, labels)
        except AttnKitError:
            continue
        canvas = torch.zeros(cfg.size, cfg.size, dtype=torch.uint8)
        for c, size, (x0, y0, x1, y1) in zip(crops, sizes, boxes):
            canvas[y0:y1, x0:x1] = torch.maximum(canvas[y0:y1, x0:x1], _scaled(c, size))
        return Scene(canvas, bt, labels, torch.tensor(sources, dtype=torch.long), caption, split)
    raise AttnKitError(f"could not place {k} items of {cfg.min_scale}..{cfg.max_scale} px on a {cfg.size} px "
                       "canvas unambiguously; expected a larger canvas or smaller items")


def make_scenes(split: str, n: int, *, seed: int = 0, config: SceneConfig | None = None) -> list[Scene]:
    """``n`` scenes of ``split`` (``"train"``, ``"valid"`` or ``"test"``), the same for the same seed.

    Each split draws from its own Fashion-MNIST items (see the module docstring) with its own
    random stream, so a split's scenes do not depend on how many scenes another split has.
    """
    if split not in SPLITS:
        raise AttnKitError(f"split {split!r} is not known; expected one of {', '.join(SPLITS)}")
    if not isinstance(n, int) or n < 1:
        raise AttnKitError(f"n must be a positive int; got {n!r}")
    cfg = config or SceneConfig()
    source, lo, hi = SPLITS[split]
    images, labels = _source(source)
    pool: list[list[int]] = [[] for _ in CLASSES]
    for i in range(lo, hi):
        pool[int(labels[i])].append(i)
    rng = random.Random(seed * 7_919 + _SEED_OFFSET[split])
    return [_draw(rng, pool, images, cfg, split) for _ in range(n)]


def stack_images(scenes: Sequence[Scene]) -> Tensor:
    """The canvases as a float batch ``(N, 1, S, S)`` in ``[0, 1]``."""
    return torch.stack([s.image for s in scenes]).unsqueeze(1).float() / 255.0
