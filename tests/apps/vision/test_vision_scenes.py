"""Scene generator invariants: boxes inside the canvas and apart, pixels from the named source
items, captions consistent with the boxes (checked with the parser), disjoint source items across
splits, seeded determinism."""

from __future__ import annotations

import pytest
import torch

from attnkit.apps.vision import scenes as sc
from attnkit.apps.vision.data import CLASSES, data_status, load_fashion_mnist
from attnkit.errors import AttnKitError


@pytest.fixture(scope="module")
def splits(request):
    from conftest import require_data

    require_data(data_status()["fashion-mnist"] == "installed", "Debian dataset-fashion-mnist", "make data")
    return {split: sc.make_scenes(split, n, seed=1) for split, n in (("train", 300), ("valid", 100), ("test", 300))}


def test_boxes_inside_and_apart(splits):
    cfg = sc.SceneConfig()
    for scene in (s for group in splits.values() for s in group):
        k = len(scene.labels)
        assert 1 <= k <= 4 and scene.boxes.shape == (k, 4) and scene.image.shape == (cfg.size, cfg.size)
        b = scene.boxes
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= cfg.size).all() and (b[:, 2:] > b[:, :2]).all()
        longer = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        assert ((longer >= cfg.min_scale) & (longer <= cfg.max_scale)).all()
        assert len(set(scene.labels.tolist())) == k
        for i in range(k):
            for j in range(i + 1, k):
                x_apart = b[i, 2] + cfg.gap <= b[j, 0] or b[j, 2] + cfg.gap <= b[i, 0]
                y_apart = b[i, 3] + cfg.gap <= b[j, 1] or b[j, 3] + cfg.gap <= b[i, 1]
                assert x_apart or y_apart
        # nothing drawn outside the boxes
        inside = torch.zeros_like(scene.image, dtype=torch.bool)
        for x0, y0, x1, y1 in b.long().tolist():
            inside[y0:y1, x0:x1] = True
        assert (scene.image[~inside] == 0).all()


def test_item_counts_and_classes_vary(splits):
    train = splits["train"]
    assert {len(s.labels) for s in train} == {1, 2, 3, 4}
    assert {int(c) for s in train for c in s.labels} == set(range(len(CLASSES)))
    assert len({s.caption for s in train}) > 150


def test_pixels_come_from_the_source_items(splits):
    for split, source in (("train", "train"), ("test", "test")):
        images, labels = load_fashion_mnist(source)
        for scene in splits[split][:40]:
            for box, label, src in zip(scene.boxes.long().tolist(), scene.labels, scene.sources):
                assert labels[src] == label
                x0, y0, x1, y1 = box
                expected = sc._scaled(sc._crop(images[src]), (y1 - y0, x1 - x0))
                assert torch.equal(scene.image[y0:y1, x0:x1], expected)


def test_splits_use_disjoint_items(splits):
    train_src = {int(i) for s in splits["train"] for i in s.sources}
    valid_src = {int(i) for s in splits["valid"] for i in s.sources}
    assert max(train_src) < 55000 <= min(valid_src) and max(valid_src) < 60000
    assert all(s.split == "test" for s in splits["test"]) and all(s.split == "train" for s in splits["train"])
    assert max(int(i) for s in splits["test"] for i in s.sources) < 10000  # indices into the test split


def test_captions_follow_from_boxes(splits):
    for scene in (s for group in splits.values() for s in group):
        assert sc.caption_of(scene.boxes, scene.labels) == scene.caption
        items, triples = sc.parse_caption(scene.caption)
        assert sorted(items) == sorted(scene.names)
        assert len(triples) == len(scene.labels) - 1
        where = dict(zip(scene.names, scene.boxes))
        for a, rel, b in triples:
            assert sc.relation(where[a], where[b]) == rel
    scores = sc.relation_scores([s.caption for s in splits["test"]], splits["test"])
    assert scores == {"relation_accuracy": 1.0, "relation_precision": 1.0, "item_f1": 1.0, "exact": 1.0}
    # every relation occurs
    rels = {t[1] for s in splits["train"] for t in sc.parse_caption(s.caption)[1]}
    assert rels == set(sc.RELATIONS)


def test_relation_scores_count_wrong_and_missing_triples(splits):
    two = next(s for s in splits["test"] if len(s.labels) == 3)
    a, rel, b = sc.parse_caption(two.caption)[1][0]
    flipped = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
               "below": "above"}[rel]
    wrong = f"a {a} {flipped} a {b}"  # one wrong triple, one missing
    scores = sc.relation_scores([wrong], [two])
    assert scores["relation_accuracy"] == 0.0 and scores["relation_precision"] == 0.0
    half = two.caption.split(",")[0]  # one right triple, one missing
    scores = sc.relation_scores([half], [two])
    assert scores["relation_accuracy"] == 0.5 and scores["relation_precision"] == 1.0 and scores["exact"] == 0.0


def test_relation_and_parser_by_hand():
    assert sc.relation([0, 0, 10, 10], [20, 4, 30, 14]) == "to the left of"
    assert sc.relation([20, 4, 30, 14], [0, 0, 10, 10]) == "to the right of"
    assert sc.relation([0, 0, 10, 10], [3, 20, 13, 30]) == "above"
    assert sc.relation([0, 0, 10, 10], [10, 10, 20, 20]) is None  # diagonal
    assert sc.relation([0, 0, 10, 10], [0, 0, 10, 10]) is None
    items, triples = sc.parse_caption("a t-shirt above an ankle boot, a shirt to the right of the ankle boot")
    assert items == ["t-shirt", "ankle boot", "shirt"]
    assert triples == [("t-shirt", "above", "ankle boot"), ("shirt", "to the right of", "ankle boot")]
    assert sc.parse_caption("a shirt shirt , the the") == (["shirt"], [])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    with pytest.raises(AttnKitError, match="placed diagonally"):
        sc.caption_of(boxes, torch.tensor([0, 1]))


def test_seeded_determinism(splits):
    a = sc.make_scenes("test", 12, seed=1)
    for x, y in zip(a, splits["test"][:12]):  # a prefix of a longer draw
        assert torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes) and x.caption == y.caption
    b = sc.make_scenes("test", 12, seed=2)
    assert any(not torch.equal(x.image, y.image) for x, y in zip(a, b))


def test_bad_arguments():
    with pytest.raises(AttnKitError, match="split 'dev' is not known"):
        sc.make_scenes("dev", 3)
    with pytest.raises(AttnKitError, match="n must be a positive int"):
        sc.make_scenes("train", 0)
    with pytest.raises(AttnKitError, match="size must be >= 64"):
        sc.SceneConfig(size=32)
