"""Object detectors for the scenes, with and without attention, and their set and grid losses.

* ``detr`` (Carion et al. 2020, DETR): a small CNN backbone (three stride-2 convolutions, an
  ``S/8 x S/8`` feature map), learned 2-D positions, a :class:`~attnkit.nn.TransformerEncoder`,
  and a :class:`~attnkit.nn.TransformerDecoder` fed with ``queries`` learned object queries; each
  query's output gives class logits over the classes plus "no object" and a box
  ``(cx, cy, w, h)`` in ``[0, 1]`` of the canvas. Training matches predictions to the true
  objects one to one with the Hungarian algorithm (cost: class probability, L1 and generalised
  IoU of the boxes) and applies a class loss (the no-object class down-weighted), an L1 and a
  GIoU loss, after every decoder layer (auxiliary losses).
* ``grid`` (YOLO v1 style, no attention): the same backbone, more convolutions, and for each
  cell of the ``S/8 x S/8`` grid an objectness logit, class logits and a box (centre offset in the
  cell, width and height as fractions of the canvas); an object belongs to the cell holding its
  centre. Detections are the cells' boxes scored by objectness x class probability, after
  per-class non-maximum suppression.

Every model maps ``images (B, 1, S, S)`` in ``[0, 1]`` to a dict of raw outputs; :meth:`detect`
turns them into ``(boxes (K, 4) xyxy pixels, labels (K,), scores (K,))`` per image.

Shape legend: B batch, S canvas side, g = S/8 grid side, N = g^2 feature tokens, Q queries,
C classes, L decoder layers, H heads, M true objects of an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import AttnKitError, ShapeError
from ...interpret import capture_attention
from ...nn import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    sinusoidal_encoding,
)
from .boxes import box_iou, cxcywh_to_xyxy, generalized_box_iou, hungarian_match, xyxy_to_cxcywh
from .captioner import check_images
from .data import CLASSES
from .stems import plain_stem

__all__ = ["DETECT_MODELS", "DetectConfig", "DETR", "GridDetector", "build_detector", "position_2d", "match",
           "set_loss", "grid_loss", "nms"]

DETECT_MODELS = ("detr", "grid")
Target = dict[str, Tensor]  # {"boxes": (M, 4) xyxy pixels, "labels": (M,)}


@dataclass(frozen=True)
class DetectConfig:
    """Sizes of a detector (the grid model uses ``d_model`` as its widest channel count)."""

    kind: str  # one of DETECT_MODELS
    image: int = 64  # canvas side S (divisible by 8)
    d_model: int = 96
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    ff: int = 192
    queries: int = 16  # DETR object queries Q (reference points on a sqrt(Q) x sqrt(Q) lattice)
    dropout: float = 0.0
    classes: int = len(CLASSES)  # C (DETR adds the no-object class)
    no_object_weight: float = 0.1  # class-loss weight of unmatched queries
    cost_class: float = 1.0  # matching and loss weights
    cost_l1: float = 5.0
    cost_giou: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in DETECT_MODELS:
            raise AttnKitError(f"model {self.kind!r} is not known; expected one of {', '.join(DETECT_MODELS)}")
        if self.image % 8:
            raise ShapeError(f"image side must divide by 8; got {self.image}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MLP(nn.Module):
    def __init__(self, d: int, out: int, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d if i < layers - 1 else out) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def nms(boxes: Tensor, scores: Tensor, iou: float = 0.5) -> Tensor:
    """Indices of the boxes ``(K, 4)`` kept by greedy non-maximum suppression, best score first."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    while len(order):
        i = int(order[0])
        keep.append(i)
        if len(order) == 1:
            break
        overlap = box_iou(boxes[i: i + 1], boxes[order[1:]])[0]
        order = order[1:][overlap <= iou]
    return torch.tensor(keep, dtype=torch.long)


def position_2d(xy: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings of points ``xy (..., 2)`` in pixels: ``(..., dim)``, x in the first
    half, y in the second (base 100: the canvas is a few dozen pixels wide)."""
    flat = xy.reshape(-1, 2)
    enc = torch.cat((sinusoidal_encoding(flat[:, 0], dim // 2, base=100.0),
                     sinusoidal_encoding(flat[:, 1], dim // 2, base=100.0)), -1)
    return enc.reshape(*xy.shape[:-1], dim)


class DETR(nn.Module):
    """A DETR-style set predictor: ``forward(images) -> {"logits": (L, B, Q, C + 1),
    "boxes": (L, B, Q, 4) cxcywh in [0, 1]}`` (one entry per decoder layer, the last is the output).

    Positions: the feature tokens carry the sinusoidal 2-D encoding of their cell centre, added
    to the encoder input and to the memory every decoder layer reads. Each query has a fixed
    reference point on a ``sqrt(Q) x sqrt(Q)`` lattice; its encoding is added to the query before
    every decoder layer and its box centre is predicted as an offset from that point (in logit
    space), as in anchor-based DETR variants, which learn several times faster than plain DETR.
    """

    def __init__(self, config: DetectConfig):
        super().__init__()
        self.config = c = config
        self.backbone = plain_stem(c.d_model)
        g = c.image // 8
        cells = (torch.arange(g, dtype=torch.float32) + 0.5) * 8
        yy, xx = torch.meshgrid(cells, cells, indexing="ij")
        self.register_buffer("memory_pos", position_2d(torch.stack((xx, yy), -1).reshape(1, g * g, 2), c.d_model),
                             persistent=False)  # (1, N, E)
        side = max(1, round(c.queries ** 0.5))
        lattice = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        qy, qx = torch.meshgrid(lattice, lattice, indexing="ij")
        refs = torch.stack((qx, qy), -1).reshape(-1, 2)
        refs = torch.cat((refs, torch.full((c.queries - len(refs), 2), 0.5)))[: c.queries]  # (Q, 2) in (0, 1)
        self.register_buffer("refs", refs, persistent=False)
        self.register_buffer("query_pos", position_2d(refs[None] * c.image, c.d_model), persistent=False)
        enc = TransformerEncoderLayer(c.d_model, c.heads, c.ff, c.dropout, activation="gelu", norm_first=True)
        self.encoder = TransformerEncoder(enc, c.enc_layers, norm=nn.LayerNorm(c.d_model))
        dec = TransformerDecoderLayer(c.d_model, c.heads, c.ff, c.dropout, activation="gelu", norm_first=True)
        self.decoder = TransformerDecoder(dec, c.dec_layers)
        self.query = nn.Parameter(torch.randn(1, c.queries, c.d_model) * 0.1)
        self.norm = nn.LayerNorm(c.d_model)
        self.class_head = nn.Linear(c.d_model, c.classes + 1)
        self.box_head = _MLP(c.d_model, 4)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_images(images, self.config.image)
        feats = self.backbone(images).flatten(2).transpose(1, 2)  # (B, N, E)
        memory = self.encoder(feats + self.memory_pos) + self.memory_pos  # (B, N, E)
        x = self.query.expand(images.shape[0], -1, -1)  # (B, Q, E)
        ref = torch.logit(self.refs)  # (Q, 2)
        logits, boxes = [], []
        for layer in self.decoder.layers:
            x = layer(x + self.query_pos, memory)  # (B, Q, E)
            h = self.norm(x)
            logits.append(self.class_head(h))  # (B, Q, C + 1)
            delta = self.box_head(h)  # (B, Q, 4)
            boxes.append(torch.cat(((ref + delta[..., :2]).sigmoid(), delta[..., 2:].sigmoid()), -1))
        return {"logits": torch.stack(logits), "boxes": torch.stack(boxes)}

    def loss(self, out: dict[str, Tensor], targets: Sequence[Target]) -> Tensor:
        return set_loss(out, targets, self.config)

    @torch.no_grad()
    def detect(self, images: Tensor, threshold: float = 0.0) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: boxes ``(K, 4)`` xyxy pixels, labels ``(K,)``, scores ``(K,)``: every query
        whose best real class has probability above ``threshold``, best first."""
        out = self(images)
        prob = out["logits"][-1].softmax(-1)[..., :-1]  # (B, Q, C)
        scores, labels = prob.max(-1)
        boxes = cxcywh_to_xyxy(out["boxes"][-1]).clamp(0, 1) * self.config.image
        result = []
        for b in range(images.shape[0]):
            keep = (scores[b] > threshold).nonzero().flatten()
            keep = keep[scores[b, keep].argsort(descending=True)]
            result.append((boxes[b, keep], labels[b, keep], scores[b, keep]))
        return result

    @torch.no_grad()
    def query_attention(self, images: Tensor) -> Tensor:
        """Cross-attention of the last decoder layer, mean of heads: ``(B, Q, N)``."""
        with capture_attention(self) as cap:
            self(images)
        w = [r.weights for r in cap.records if r.module and r.module.endswith("multihead_attn")]
        return w[-1].mean(1)  # (B, Q, N)


def match(logits: Tensor, boxes: Tensor, targets: Sequence[Target], c: DetectConfig) -> list[tuple[Tensor, Tensor]]:
    """Hungarian matching of each image's ``Q`` predictions (``logits (B, Q, C + 1)``, ``boxes
    (B, Q, 4)`` cxcywh in [0, 1]) to its ``M`` objects: per image ``(query indices, object indices)``.
    The cost is ``-cost_class * p(class) + cost_l1 * L1 - cost_giou * GIoU``."""
    sizes = [len(t["labels"]) for t in targets]
    if sum(sizes) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return [(empty, empty) for _ in targets]
    labels = torch.cat([t["labels"] for t in targets])  # (sum M,)
    gt = torch.cat([t["boxes"] for t in targets]) / c.image  # (sum M, 4) xyxy in [0, 1]
    b, q = boxes.shape[:2]
    flat = boxes.reshape(b * q, 4)
    cost = (-c.cost_class * logits.reshape(b * q, -1).softmax(-1)[:, labels]
            + c.cost_l1 * torch.cdist(flat, xyxy_to_cxcywh(gt), p=1)
            - c.cost_giou * generalized_box_iou(cxcywh_to_xyxy(flat), gt)).reshape(b, q, -1)  # (B, Q, sum M)
    return [hungarian_match(part[i]) for i, part in enumerate(cost.split(sizes, -1))]


def set_loss(out: dict[str, Tensor], targets: Sequence[Target], c: DetectConfig) -> Tensor:
    """DETR's loss summed over decoder layers: class cross-entropy over every query (unmatched ones
    should say no-object, weighted ``no_object_weight``), and L1 + GIoU on the matched boxes,
    normalised by the number of true objects."""
    n_layers, b, q, k = out["logits"].shape
    weight = torch.ones(k)
    weight[-1] = c.no_object_weight
    n_obj = max(1, sum(len(t["labels"]) for t in targets))
    total = out["logits"].new_zeros(())
    for layer in range(n_layers):
        logits, boxes = out["logits"][layer], out["boxes"][layer]  # (B, Q, C + 1), (B, Q, 4)
        with torch.no_grad():
            pairs = match(logits, boxes, targets, c)
        img = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(pairs)])
        rows = torch.cat([r for r, _ in pairs])
        labels = torch.cat([t["labels"][cols] for t, (_, cols) in zip(targets, pairs)])
        gt = torch.cat([t["boxes"][cols] for t, (_, cols) in zip(targets, pairs)]) / c.image  # (sum M, 4)
        classes = torch.full((b, q), k - 1, dtype=torch.long)
        classes[img, rows] = labels
        ce = F.cross_entropy(logits.reshape(-1, k), classes.reshape(-1), weight=weight)
        pred = boxes[img, rows]  # (sum M, 4)
        l1 = F.l1_loss(pred, xyxy_to_cxcywh(gt), reduction="sum")
        giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), gt))).sum()
        total = total + c.cost_class * ce + (c.cost_l1 * l1 + c.cost_giou * giou) / n_obj
    return total


class GridDetector(nn.Module):
    """A YOLO-v1-style grid detector without attention: ``forward(images) -> {"obj": (B, g, g),
    "logits": (B, g, g, C), "boxes": (B, g, g, 4)}`` with boxes as (x offset in the cell, y offset,
    w, h), all in ``[0, 1]``."""

    def __init__(self, config: DetectConfig):
        super().__init__()
        self.config = c = config
        d = c.d_model
        self.backbone = plain_stem(d)
        self.head = nn.Sequential(nn.GELU(), nn.Conv2d(d, d, 3, padding=1), nn.GELU(), nn.Conv2d(d, d, 3, padding=1),
                                  nn.GELU(), nn.Conv2d(d, d, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(d, 1 + c.classes + 4, 1))

    @property
    def grid(self) -> int:
        return self.config.image // 8

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_images(images, self.config.image)
        y = self.head(self.backbone(images)).permute(0, 2, 3, 1)  # (B, g, g, 1 + C + 4)
        return {"obj": y[..., 0], "logits": y[..., 1: 1 + self.config.classes], "boxes": y[..., -4:].sigmoid()}

    def _to_xyxy(self, boxes: Tensor) -> Tensor:
        """Cell-relative ``(B, g, g, 4)`` -> xyxy in [0, 1] of the canvas."""
        g = self.grid
        idx = torch.arange(g, dtype=boxes.dtype)
        cx = (idx[None, None, :] + boxes[..., 0]) / g
        cy = (idx[None, :, None] + boxes[..., 1]) / g
        return cxcywh_to_xyxy(torch.stack((cx, cy, boxes[..., 2], boxes[..., 3]), -1))

    def loss(self, out: dict[str, Tensor], targets: Sequence[Target]) -> Tensor:
        return grid_loss(self, out, targets)

    @torch.no_grad()
    def detect(self, images: Tensor, threshold: float = 0.0, iou: float = 0.5,
               top: int = 16) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: the ``top`` best cells above ``threshold`` after per-class NMS (see :meth:`DETR.detect`)."""
        out = self(images)
        prob = out["obj"].sigmoid()[..., None] * out["logits"].softmax(-1)  # (B, g, g, C)
        scores, labels = prob.flatten(1, 2).max(-1)  # (B, N)
        boxes = self._to_xyxy(out["boxes"]).flatten(1, 2).clamp(0, 1) * self.config.image  # (B, N, 4)
        result = []
        for b in range(images.shape[0]):
            keep = (scores[b] > threshold).nonzero().flatten()
            kept: list[Tensor] = []
            for cls in labels[b, keep].unique():
                idx = keep[labels[b, keep] == cls]
                kept.append(idx[nms(boxes[b, idx], scores[b, idx], iou)])
            idx = torch.cat(kept) if kept else keep
            idx = idx[scores[b, idx].argsort(descending=True)][:top]
            result.append((boxes[b, idx], labels[b, idx], scores[b, idx]))
        return result


def grid_loss(model: GridDetector, out: dict[str, Tensor], targets: Sequence[Target]) -> Tensor:
    """YOLO-style loss: objectness BCE on every cell; class cross-entropy, L1 on the cell-relative
    box and GIoU on the canvas box at the cells that hold an object's centre."""
    c, g = model.config, model.grid
    b = out["obj"].shape[0]
    obj = torch.zeros(b, g, g)
    cls_loss = l1 = giou = out["obj"].new_zeros(())
    n_obj = max(1, sum(len(t["labels"]) for t in targets))
    pred_xyxy = model._to_xyxy(out["boxes"])
    for i, t in enumerate(targets):
        if len(t["labels"]) == 0:
            continue
        cxcywh = xyxy_to_cxcywh(t["boxes"] / c.image)  # (M, 4)
        col = (cxcywh[:, 0] * g).floor().clamp(0, g - 1).long()
        row = (cxcywh[:, 1] * g).floor().clamp(0, g - 1).long()
        obj[i, row, col] = 1.0
        cell = torch.stack((cxcywh[:, 0] * g - col, cxcywh[:, 1] * g - row, cxcywh[:, 2], cxcywh[:, 3]), -1)
        cls_loss = cls_loss + F.cross_entropy(out["logits"][i, row, col], t["labels"], reduction="sum")
        l1 = l1 + F.l1_loss(out["boxes"][i, row, col], cell, reduction="sum")
        giou = giou + (1 - torch.diag(generalized_box_iou(pred_xyxy[i, row, col], t["boxes"] / c.image))).sum()
    bce = F.binary_cross_entropy_with_logits(out["obj"], obj, reduction="sum") / b
    return bce + (c.cost_class * cls_loss + c.cost_l1 * l1 + c.cost_giou * giou) / n_obj


def build_detector(config: DetectConfig) -> nn.Module:
    """The detector ``config.kind`` names."""
    return DETR(config) if config.kind == "detr" else GridDetector(config)
