"""The relation-accuracy ceiling of captioning: distinct class assignment against brute force,
items framed from the canvas, captions with repeated names, true labels scoring 1, and the command."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from vision_helpers import quick_classifier as train_quick

from attnkit.apps.vision import ceiling, data
from attnkit.apps.vision.scenes import _crop, caption_of, describe, make_scenes, parse_caption, relation_scores
from attnkit.errors import AttnKitError


def _installed() -> bool:
    return data.data_status()["fashion-mnist"] == "installed"


needs_data = pytest.mark.skipif(not _installed(), reason="Debian dataset-fashion-mnist is not installed "
                                                          "(run 'make data')")


@pytest.mark.parametrize("k,c", [(1, 3), (2, 4), (3, 5), (4, 6), (4, 10)])
def test_distinct_labels_is_the_best_assignment_by_brute_force(k, c):
    g = torch.Generator().manual_seed(k * 100 + c)
    for _ in range(5):
        logp = torch.randn(k, c, generator=g).log_softmax(-1)
        got = ceiling.distinct_labels(logp)
        assert len(set(got.tolist())) == k
        best = max(itertools.permutations(range(c), k), key=lambda p: float(sum(logp[i, p[i]] for i in range(k))))
        torch.testing.assert_close(logp[torch.arange(k), got].sum(), logp[torch.arange(k), torch.tensor(best)].sum())


def test_distinct_labels_keeps_argmax_when_it_is_already_distinct_and_refuses_bad_shapes():
    logp = torch.tensor([[0.0, -5, -5], [-5, -5, 0.0]])
    assert ceiling.distinct_labels(logp).tolist() == [0, 2]
    clash = torch.tensor([[-0.1, -1.0, -9], [-0.2, -3.0, -9]])  # both prefer class 0; item 0 loses less by moving
    assert ceiling.distinct_labels(clash).tolist() == [1, 0]
    with pytest.raises(AttnKitError, match=r"log_probs must be \(K, C\) with K <= C; got shape \(4, 3\)"):
        ceiling.distinct_labels(torch.zeros(4, 3))


def test_describe_names_repeated_classes_and_matches_caption_of_on_distinct_ones():
    boxes = torch.tensor([[0.0, 0, 10, 10], [30, 2, 40, 12], [30, 30, 40, 40]])
    assert describe(boxes, ["bag", "sneaker", "shirt"]) == caption_of(boxes, torch.tensor([8, 7, 6]))
    text = describe(boxes, ["bag", "bag", "shirt"])
    assert text == "a bag to the left of a bag, a shirt below the bag"
    items, triples = parse_caption(text)
    assert items == ["bag", "shirt"] and len(triples) == 2


@needs_data
def test_canvas_items_frame_each_item_like_fashion_mnist():
    scenes = make_scenes("test", 12)
    source, _ = data.load_fashion_mnist("test")
    own, other = [], []
    for s in scenes:
        items = ceiling.canvas_items(s)
        assert items.shape == (len(s.labels), 28, 28) and items.dtype == torch.uint8
        ink = items > 20
        for k in range(len(s.labels)):
            rows, cols = ink[k].any(1).nonzero().flatten(), ink[k].any(0).nonzero().flatten()
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 26  # the longer side spans the frame
            framed = items[k][rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].float()
            for j in range(len(s.labels)):  # the item's own ink crop brought to the same size, and the others'
                crop = _crop(source[int(s.sources[j])]).float()[None, None]
                back = torch.nn.functional.interpolate(crop, size=tuple(framed.shape), mode="bilinear", antialias=True)
                corr = float(torch.corrcoef(torch.stack([framed.flatten(), back.flatten()]))[0, 1])
                (own if j == k else other).append(corr)
    assert min(own) > 0.7 and sum(own) / len(own) > 0.9
    assert sum(own) / len(own) > sum(other) / len(other) + 0.2


@needs_data
def test_true_labels_give_every_relation_and_confused_labels_lose_theirs():
    scenes = [s for s in make_scenes("test", 40) if len(s.labels) >= 2]
    exact = relation_scores(ceiling.ceiling_captions(scenes, [s.labels for s in scenes]), scenes)
    assert exact["relation_accuracy"] == 1.0 and exact["item_f1"] == 1.0
    wrong = [s.labels.clone() for s in scenes]
    for lab in wrong:
        lab[0] = (lab[0] + 1) % 10  # one misread item per scene
    worse = relation_scores(ceiling.ceiling_captions(scenes, wrong), scenes)
    assert worse["relation_accuracy"] < 1.0 and worse["item_f1"] < 1.0


@pytest.fixture(scope="module")
def quick_classifier(tmp_path_factory):
    if not _installed():
        pytest.skip("Debian dataset-fashion-mnist is not installed (run 'make data')")
    run, _ = train_quick("cnn", tmp_path_factory.mktemp("cnn") / "run")
    return run.path


def test_ceiling_of_a_quick_classifier_and_the_command(quick_classifier, tmp_path, capsys):
    res = ceiling.ceiling(quick_classifier, n=60)
    assert set(res["readings"]) == set(ceiling.READINGS)
    assert res["readings"]["labels"]["argmax"]["relation_accuracy"] == 1.0
    src = res["readings"]["source"]
    for rule in ("argmax", "distinct"):
        assert 0.3 < src[rule]["item_accuracy"] < 1.0  # a quick classifier: better than chance, not perfect
        assert src[rule]["relation_accuracy"] < 1.0
    out = tmp_path / "ceiling.json"
    assert ceiling.main([str(quick_classifier), "-n", "20", "--out", str(out)]) == 0
    assert "relation-accuracy ceiling" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["n"] == 20


def test_command_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert ceiling.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(AttnKitError, match="n must be a positive int; got 0"):
        ceiling.ceiling(tmp_path / "nope", n=0)
