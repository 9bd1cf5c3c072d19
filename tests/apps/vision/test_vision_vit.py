"""The ViT task: models, rollout, a quick run against the majority-class baseline on held-out test
images, the rollout picture, ``attnkit eval vit`` and ``attnkit classify-image`` with bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vision_helpers import quick_classifier

from attnkit import masks
from attnkit.apps.vision import classify, data
from attnkit.apps.vision.vit import MODELS, ModelConfig, SmallCNN, ViT, build_model, rollout_maps
from attnkit.cli import main
from attnkit.errors import AttnKitError, ShapeError


def _installed() -> bool:
    return data.data_status()["fashion-mnist"] == "installed"


@pytest.fixture(scope="module")
def quick_vit(tmp_path_factory):
    """``(run folder, results)`` of ``attnkit train vit --quick`` (one thread)."""
    if not _installed():
        pytest.skip("Debian dataset-fashion-mnist is not installed (run 'make data')")
    run, results = quick_classifier("vit", tmp_path_factory.mktemp("vit") / "run")
    return run.path, results


@pytest.mark.parametrize("kind", MODELS)
def test_models_map_images_to_logits(kind):
    torch.manual_seed(0)
    m = build_model(ModelConfig(kind=kind, d_model=16, layers=2, heads=2, ff=32, local_layers=1, channels=(4, 8)))
    out = m(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert isinstance(m, SmallCNN if kind == "cnn" else ViT)
    with pytest.raises(ShapeError, match=r"images must be \(B, 1, 28, 28\); got shape \(3, 28, 28\)"):
        m(torch.randn(3, 28, 28))


def test_neighborhood_vit_masks_early_layers_and_equals_global_when_the_radius_covers_the_grid():
    cfg = ModelConfig(kind="vit-neighborhood", patch=7, d_model=16, layers=3, heads=2, ff=32, local_layers=2,
                      radius=1)
    vit = build_model(cfg)
    assert vit._masks[0] == masks.neighborhood_2d(4, 4, 1, extra_tokens=1) and vit._masks[2] is None
    wide = build_model(ModelConfig(**{**cfg.to_dict(), "radius": 3}))
    glob = build_model(ModelConfig(**{**cfg.to_dict(), "kind": "vit"}))
    wide.load_state_dict(vit.state_dict())
    glob.load_state_dict(vit.state_dict())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(wide(x), glob(x))  # radius 3 on a 4 x 4 grid: every patch sees every patch
    assert not torch.allclose(vit(x), glob(x))  # radius 1 does not


@pytest.mark.parametrize("kwargs,words", [(dict(kind="mlp"), "model 'mlp' is not known"),
                                          (dict(kind="vit", patch=5), "must divide by the patch side 5"),
                                          (dict(kind="vit-neighborhood", layers=2, local_layers=3),
                                           "local_layers must be")])
def test_model_config_errors(kwargs, words):
    with pytest.raises(AttnKitError, match=words):
        ModelConfig(**kwargs)


def test_rollout_maps_cover_the_patches():
    vit = build_model(ModelConfig(kind="vit", patch=7, d_model=16, layers=2, heads=2, ff=32))
    maps = rollout_maps(vit, torch.randn(3, 1, 28, 28))
    assert maps.shape == (3, 4, 4) and bool((maps > 0).all())
    assert bool((maps.sum((1, 2)) < 1).all())  # the rest stays on the class token
    with pytest.raises(AttnKitError, match="rollout needs a ViT; got a SmallCNN"):
        rollout_maps(build_model(ModelConfig(kind="cnn", channels=(4, 8))), torch.randn(1, 1, 28, 28))


def test_quick_run_beats_the_majority_baseline_on_held_out_test_images(quick_vit):
    run, results = quick_vit
    test, base = results["test"], results["baselines"]["majority-class"]
    assert test["n"] == 1000 and base["accuracy"] < 0.15
    assert test["accuracy"] > base["accuracy"] + 0.25, results
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sizes"] == {"train": 6000, "valid": 500, "test": 1000}
    assert set(results["time_to_valid_accuracy"]) == {str(t) for t in classify.THRESHOLDS}
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "eval" and "accuracy" in e for e in evals)


def test_rollout_picture_and_curves_render(quick_vit, tmp_path):
    import matplotlib.image as mpimg

    from attnkit.apps.vision.pictures_vit import curves_plot

    run, results = quick_vit
    assert results["pictures"] == ["rollout.png"]
    img = mpimg.imread(run / "rollout.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 800
    assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    curves = mpimg.imread(curves_plot({"vit": run}, tmp_path / "curves.png"))
    assert curves.shape[1] > 600 and float(curves[..., :3].std()) > 0.05


def test_eval_command_rewrites_results(quick_vit, capsys):
    run, results = quick_vit
    (run / "results.json").unlink()
    assert main(["eval", "vit", str(run), "--threads", "1"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert "accuracy" in capsys.readouterr().out


def _png(path, array):
    import matplotlib.image as mpimg

    mpimg.imsave(path, array, cmap="gray", vmin=0, vmax=1)
    return str(path)


def test_classify_image_command_writes_the_overlay(quick_vit, tmp_path, capsys):
    run, _ = quick_vit
    images, labels = data.load_fashion_mnist("test")
    trouser = int((labels == 1).nonzero()[0])
    dark_on_light = 1 - np.kron(images[trouser].numpy() / 255.0, np.ones((3, 3)))  # 84 x 84, inverted
    img = _png(tmp_path / "trouser.png", dark_on_light)
    out = tmp_path / "overlay.png"
    assert main(["classify-image", str(run), img, "--out", str(out), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "trouser" and lines[2].startswith("(the picture was inverted")
    assert out.is_file() and out.stat().st_size > 1000
    grey, inverted = classify.read_image(img)
    assert inverted and grey.shape == (28, 28)
    assert float((grey - torch.from_numpy(images[trouser].numpy() / 255.0).float()).abs().mean()) < 0.05


def run_bad(argv, capsys) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (argv, captured)
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, lines
    return lines[0]


def test_classify_image_bad_input(quick_vit, tmp_path, capsys, monkeypatch):
    run, _ = quick_vit
    ok = _png(tmp_path / "ok.png", np.zeros((28, 28)))
    (tmp_path / "text.png").write_text("not a picture")
    cases = [
        ([str(run), str(tmp_path / "text.png")], "cannot be read as a picture"),
        ([str(run), str(tmp_path / "missing.png")], "does not exist; expected a picture file"),
        ([str(run), _png(tmp_path / "small.png", np.zeros((20, 40)))], "is 40 x 20 pixels; expected each side in 28"),
        ([str(tmp_path), ok], "has no config.json"),
        ([str(run), ok, "--out", str(tmp_path / "x.txt")], "expected a picture name ending in"),
        ([str(run), ok, "--top", "11"], "--top 11; expected an integer from 1 to 10"),
    ]
    for argv, words in cases:
        assert words in run_bad(["classify-image", *argv], capsys)
    import matplotlib.image as mpimg

    monkeypatch.setattr(mpimg, "imread", lambda path: np.zeros((30, 30, 5), dtype=np.float32))
    assert "has 5 channels (shape (30, 30, 5)); expected grey" in run_bad(["classify-image", str(run), ok], capsys)


def test_train_and_eval_refuse_bad_arguments(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"task": "translation"}))
    (foreign / "model.safetensors").write_bytes(b"")
    assert "--model gpt; expected one of vit, vit-neighborhood, " in run_bad(["train", "vit", "--model", "gpt"], capsys)
    assert "--data mnist; expected one of fashion-mnist" in run_bad(["train", "vit", "--data", "mnist"], capsys)
    assert "is a 'translation' run; expected a vit run" in run_bad(["eval", "vit", str(foreign)], capsys)
    assert "is a 'translation' run; expected a vit run" in run_bad(["classify-image", str(foreign), "x.png"], capsys)
