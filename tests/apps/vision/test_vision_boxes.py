"""Box operations and Hungarian matching against hand-computed values and brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnkit.apps.vision.boxes import (
    box_area,
    box_iou,
    cxcywh_to_xyxy,
    generalized_box_iou,
    hungarian_match,
    xyxy_to_cxcywh,
)
from attnkit.errors import AttnKitError, ShapeError


def test_conversions_by_hand():
    xyxy = torch.tensor([[0.0, 2.0, 4.0, 10.0], [1.0, 1.0, 1.0, 3.0]])
    cxcywh = torch.tensor([[2.0, 6.0, 4.0, 8.0], [1.0, 2.0, 0.0, 2.0]])
    assert torch.equal(xyxy_to_cxcywh(xyxy), cxcywh)
    assert torch.equal(cxcywh_to_xyxy(cxcywh), xyxy)
    assert torch.equal(box_area(xyxy), torch.tensor([32.0, 0.0]))
    batch = torch.rand(2, 3, 4) * 10
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(batch)), batch, atol=1e-5)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0],
                             [4 / 16, 4 / 16, 0.0]])
    assert torch.allclose(box_iou(a, b), expected)


def test_generalized_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    # a0-b0: disjoint, hull 3x1=3, union 2 -> 0 - 1/3;  a0-b1: disjoint, hull 3x3=9, union 5 -> -4/9
    # a0-b2: a0 inside b2: iou 1/4, hull = b2 -> 1/4;  a1-b0: hull 3x2=6, union 5 -> -1/6
    # a1-b1: iou 1/7, hull 9, union 7 -> 1/7 - 2/9;  a1-b2: identical -> 1
    expected = torch.tensor([[-1 / 3, -4 / 9, 1 / 4],
                             [-1 / 6, 1 / 7 - 2 / 9, 1.0]])
    assert torch.allclose(generalized_box_iou(a, b), expected)


def test_giou_is_differentiable_and_bounded():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    b = torch.tensor([[3.0, 1.0, 5.0, 4.0]])
    g = generalized_box_iou(a, b)
    g.sum().backward()
    assert -1 <= g.item() <= 1 and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_bad_boxes_are_refused():
    with pytest.raises(ShapeError, match=r"a must be a tensor of boxes \(N, 4\); got \(3,\)"):
        box_iou(torch.zeros(3), torch.zeros(1, 4))
    with pytest.raises(ShapeError, match=r"boxes must be a tensor of boxes"):
        xyxy_to_cxcywh(torch.zeros(2, 3))
    with pytest.raises(AttnKitError, match="x1 < x0"):
        generalized_box_iou(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.zeros(1, 4))


def _brute_force(cost: torch.Tensor) -> float:
    n, m = cost.shape
    best = math.inf
    if n >= m:
        for rows in itertools.permutations(range(n), m):
            best = min(best, sum(float(cost[r, c]) for c, r in enumerate(rows)))
    else:
        for cols in itertools.permutations(range(m), n):
            best = min(best, sum(float(cost[r, c]) for r, c in enumerate(cols)))
    return best


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 2), (2, 4), (6, 4)])
def test_hungarian_matches_brute_force(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    for _ in range(10):
        cost = torch.rand(shape, generator=gen)
        rows, cols = hungarian_match(cost)
        assert len(rows) == len(cols) == min(shape)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-6)


def test_hungarian_refuses_nan():
    with pytest.raises(AttnKitError, match="NaN or infinite"):
        hungarian_match(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ShapeError, match=r"cost must be a \(N, M\) tensor"):
        hungarian_match(torch.zeros(3))
