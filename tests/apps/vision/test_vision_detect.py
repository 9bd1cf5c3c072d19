"""Detection: the set loss and its matching, the grid targets, NMS, mAP with pycocotools on known
answers, the quick DETR run against the trivial baseline, the attention pictures, and the
``attnkit detect`` command with good and bad images."""

from __future__ import annotations

import pytest
import torch

from attnkit.apps.vision.detector import DetectConfig, GridDetector, build_detector, match, nms
from attnkit.apps.vision.scenes import Scene
from attnkit.cli import main
from conftest import png_ok


@pytest.fixture(scope="module")
def quick(vision_quick_run):
    """The quick run the demo uses."""
    return vision_quick_run("detect")


def _scene(boxes, labels) -> Scene:
    b = torch.tensor(boxes, dtype=torch.float32)
    return Scene(torch.zeros(64, 64, dtype=torch.uint8), b, torch.tensor(labels), torch.zeros(len(labels)), "")


def test_coco_map_on_known_answers():
    from attnkit.apps.vision.detect import coco_map

    scenes = [_scene([[0, 0, 20, 20], [30, 30, 50, 60]], [1, 2]), _scene([[10, 10, 30, 30]], [3])]
    perfect = [(s.boxes, s.labels, torch.ones(len(s.labels))) for s in scenes]
    assert coco_map(perfect, scenes) == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}
    wrong_class = [(s.boxes, (s.labels + 1) % 10, torch.ones(len(s.labels))) for s in scenes]
    assert coco_map(wrong_class, scenes)["map50"] == 0.0
    # boxes shifted to IoU 0.6: counted at 0.5, not from 0.65 up
    shifted = [(s.boxes + torch.tensor([5.0, 0, 5, 0]) * (s.boxes[:, 2:3] - s.boxes[:, 0:1]) / 20, s.labels,
                torch.ones(len(s.labels))) for s in scenes]
    m = coco_map(shifted, scenes)
    assert m["map50"] == pytest.approx(1.0) and 0.05 < m["map"] < 0.5


def test_set_matching_is_the_cheapest_assignment():
    cfg = DetectConfig(kind="detr")
    logits = torch.zeros(1, 3, 11)
    boxes = torch.tensor([[[0.8, 0.8, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]])
    target = {"boxes": torch.tensor([[6.4, 6.4, 19.2, 19.2], [44.8, 44.8, 57.6, 57.6]]), "labels": torch.tensor([0, 4])}
    (rows, cols), = match(logits, boxes, [target], cfg)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


@pytest.mark.parametrize("kind", ["detr", "grid"])
def test_losses_train_and_detect_shapes(kind):
    torch.manual_seed(0)
    m = build_detector(DetectConfig(kind=kind, d_model=32, enc_layers=1, dec_layers=2, heads=2, ff=64))
    x = torch.rand(2, 1, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = m.loss(m(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    m.eval()
    (boxes, labels, scores), _ = m.detect(x)
    assert boxes.shape[1] == 4 and labels.shape == scores.shape and (boxes >= 0).all() and (boxes <= 64).all()


def test_grid_cells_and_nms():
    g = GridDetector(DetectConfig(kind="grid", d_model=16))
    cell = torch.zeros(1, 8, 8, 4)
    cell[0, 2, 5] = torch.tensor([0.5, 0.5, 0.25, 0.125])  # row 2, column 5: centre (5.5/8, 2.5/8)
    xyxy = g._to_xyxy(cell)[0, 2, 5] * 64
    assert torch.allclose(xyxy, torch.tensor([44.0 - 8, 20.0 - 4, 44.0 + 8, 20.0 + 4]))
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7])).tolist() == [0, 2]
    assert nms(boxes, torch.tensor([0.5, 0.8, 0.7])).tolist() == [1, 2]


def test_quick_run_beats_the_trivial_baseline(quick):
    path, results = quick
    t, base = results["test"], results["baselines"]["class-prior-mean-box"]
    assert t["n"] == 300 and t["objects"] > 300
    assert t["map50"] > base["map50"] + 0.02 and t["map"] > base["map"]
    assert set(results["time_to_valid_map50"]) == {"0.3", "0.5", "0.6"}
    assert len(results["pictures"]) == 2 and all(png_ok(path / p) for p in results["pictures"])


def test_detect_command(quick, tmp_path, capsys):
    from attnkit.apps.vision.common import load_scenes, write_image

    path, _ = quick
    image = write_image(load_scenes("test", 300)[3].image, tmp_path / "scene.png")
    pic = tmp_path / "det.png"
    assert main(["detect", str(path), str(image), "--threshold", "0.05", "--out", str(pic)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"wrote {pic}" and png_ok(pic) and len(out) >= 2
    assert main(["eval", "detect", str(path)]) == 0
    assert "mAP@0.5" in capsys.readouterr().out


def test_detect_command_refuses_bad_input(quick, tmp_path, capsys):
    from PIL import Image

    path, _ = quick
    rgb, small = tmp_path / "rgb.png", tmp_path / "small.png"
    Image.new("RGBA", (64, 64)).save(rgb)
    Image.new("L", (64, 32)).save(small)
    cases = [([str(rgb)], "has 4 channels (RGBA); expected 1"), ([str(small)], "is 64x32 pixels; expected 64x64"),
             ([str(small), "--threshold", "2"], "--threshold 2; expected a number from 0 to 1")]
    for extra, message in cases:
        assert main(["detect", str(path), *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    from attnkit.apps.vision.caption import load_run

    with pytest.raises(Exception, match="is a 'detect' run; expected a caption run"):
        load_run(path)
