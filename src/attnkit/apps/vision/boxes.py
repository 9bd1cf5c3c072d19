"""Box operations, written once for every vision model: format conversions, areas, pairwise IoU
and generalised IoU (Rezatofighi et al. 2019), and Hungarian matching.

Formats: ``xyxy`` is ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``; ``cxcywh`` is
``(centre x, centre y, width, height)``. Every function is differentiable (the detection losses
use them).

Shape legend: N, M boxes; ``(..., 4)`` any leading dims.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import AttnKitError, ShapeError

__all__ = ["xyxy_to_cxcywh", "cxcywh_to_xyxy", "box_area", "box_iou", "generalized_box_iou", "hungarian_match"]


def _check(boxes: Tensor, name: str, rank: int | None = None) -> None:
    if not isinstance(boxes, Tensor) or boxes.shape[-1:] != (4,) or (rank is not None and boxes.dim() != rank):
        want = "(N, 4)" if rank == 2 else "(..., 4)"
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ShapeError(f"{name} must be a tensor of boxes {want}; got {got}")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners -> centre and size.

    >>> xyxy_to_cxcywh(torch.tensor([[0., 2., 4., 10.]])).tolist()
    [[2.0, 6.0, 4.0, 8.0]]
    """
    _check(boxes, "boxes")
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre and size -> corners.

    >>> cxcywh_to_xyxy(torch.tensor([[2., 6., 4., 8.]])).tolist()
    [[0.0, 2.0, 4.0, 10.0]]
    """
    _check(boxes, "boxes")
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``(...)`` of xyxy boxes ``(..., 4)``."""
    _check(boxes, "boxes")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union ``(N, M)`` of xyxy boxes ``a (N, 4)`` and ``b (M, 4)``
    (0 where both boxes are empty).

    >>> box_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 1., 3., 3.]])).tolist()
    [[0.1428571492433548]]
    """
    _check(a, "a", 2)
    _check(b, "b", 2)
    inter, union = _inter_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalised IoU ``(N, M)`` in ``[-1, 1]``: ``IoU - (C - U) / C`` with ``C`` the
    area of the smallest box enclosing both and ``U`` their union. Boxes must be well formed
    (``x1 >= x0``, ``y1 >= y0``).

    >>> generalized_box_iou(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([[2., 0., 3., 1.]])).tolist()
    [[-0.3333333432674408]]
    """
    _check(a, "a", 2)
    _check(b, "b", 2)
    for name, x in (("a", a), ("b", b)):
        if bool(((x[:, 2:] < x[:, :2]) & ~x[:, 2:].isnan()).any()):
            raise AttnKitError(f"{name} has boxes with x1 < x0 or y1 < y0; expected xyxy boxes")
    inter, union = _inter_union(a, b)
    tiny = torch.finfo(union.dtype).tiny
    iou = torch.where(union > 0, inter / union.clamp(min=tiny), torch.zeros_like(union))
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]  # (N, M)
    return iou - torch.where(hull > 0, (hull - union) / hull.clamp(min=tiny), torch.zeros_like(hull))


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The assignment of rows (predictions) to columns (targets) of least total ``cost (N, M)``:
    ``(rows, cols)`` int64 of length ``min(N, M)``, sorted by row (scipy's
    ``linear_sum_assignment``). NaN or infinite costs are refused.

    >>> hungarian_match(torch.tensor([[4., 1.], [2., 8.], [3., 3.]]))
    (tensor([0, 1]), tensor([1, 0]))
    """
    from scipy.optimize import linear_sum_assignment

    if not isinstance(cost, Tensor) or cost.dim() != 2:
        raise ShapeError(f"cost must be a (N, M) tensor; got {getattr(cost, 'shape', type(cost).__name__)}")
    if not bool(torch.isfinite(cost).all()):
        raise AttnKitError("cost has NaN or infinite entries; expected finite matching costs")
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
