"""The ViT training recipe: the batch augmentation (shifts and flips), the convolutional-stem ViT,
label smoothing in the full preset, and the quick conv-stem run against the majority baseline."""

from __future__ import annotations

import json

import pytest
import torch
from vision_helpers import quick_classifier

from attnkit.apps.vision import classify, data
from attnkit.apps.vision.vit import MODELS, ModelConfig, ViT, build_model
from attnkit.cli import main
from attnkit.errors import AttnKitError, ShapeError

BLACK = -classify.MEAN / classify.STD  # a black pixel, normalised


def _installed() -> bool:
    return data.data_status()["fashion-mnist"] == "installed"


def test_shift_flip_keeps_shape_and_dtype_and_changes_images():
    x = torch.randn(64, 1, 28, 28)
    out = classify.shift_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = (out != x).flatten(1).any(1)
    assert int(changed.sum()) >= 50  # 1 in 50 draws neither shifts nor flips
    assert x.equal(x.clone())  # the input is not modified in place
    x64 = x.double()
    assert classify.shift_flip(x64, torch.Generator().manual_seed(0)).dtype == torch.float64


def test_shift_flip_is_deterministic_under_a_seed():
    x = torch.randn(16, 1, 28, 28)
    a = classify.shift_flip(x, torch.Generator().manual_seed(7))
    b = classify.shift_flip(x, torch.Generator().manual_seed(7))
    c = classify.shift_flip(x, torch.Generator().manual_seed(8))
    assert a.equal(b) and not a.equal(c)


def test_shift_flip_moves_a_pixel_where_the_draws_say():
    """One bright pixel at (row 1, column 0) of a 4 x 4 image, shift 1: the same generator's draws
    give the row and column offsets (dy, dx in 0..2) and the flip; the pixel must land at
    (1 + 1 - dy, 0 + 1 - dx), mirrored to column 3 - that when flipped, and black fill elsewhere
    it came from outside the image."""
    b = 32
    x = torch.zeros(b, 1, 4, 4)
    x[:, 0, 1, 0] = 5.0
    out = classify.shift_flip(x, torch.Generator().manual_seed(3), shift=1)
    gen = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 3, (b,), generator=gen), torch.randint(0, 3, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    seen = set()
    for i in range(b):
        r, c = 1 + 1 - int(dy[i]), 0 + 1 - int(dx[i])
        want = torch.zeros(4, 4)
        if 0 <= r < 4 and 0 <= c < 4:
            want[r, c] = 5.0
        # rows / columns brought in from the padding are black
        if int(dy[i]) == 0:
            want[0] = BLACK
        if int(dy[i]) == 2:
            want[3] = BLACK
        if int(dx[i]) == 0:
            want[:, 0] = BLACK
        if int(dx[i]) == 2:
            want[:, 3] = BLACK
        if bool(flip[i]):
            want = want.flip(-1)
        torch.testing.assert_close(out[i, 0], want, rtol=0, atol=0)
        seen.add((int(dy[i]), int(dx[i]), bool(flip[i])))
    assert len(seen) > 6  # the example exercises many shifts, with and without flips


def test_shift_flip_hand_example_without_shift_is_a_mirror_or_the_image():
    x = torch.arange(8.0).view(1, 1, 2, 4).expand(40, 1, 2, 4).contiguous()
    out = classify.shift_flip(x, torch.Generator().manual_seed(0), shift=0)
    mirror = torch.tensor([[3.0, 2.0, 1.0, 0.0], [7.0, 6.0, 5.0, 4.0]])
    flipped = [bool(o[0].equal(mirror)) for o in out]
    assert all(f or o[0].equal(x[0, 0]) for f, o in zip(flipped, out))
    assert 5 < sum(flipped) < 35


def test_augmented_batches_keep_labels_aligned():
    # image i is black with a centre square of brightness labels[i] + 1: shifts of 2 pixels keep
    # the square inside and flips keep its value, so the batch's maximum per image names its label
    labels = torch.arange(200) % 10
    images = torch.full((200, 1, 28, 28), BLACK)
    images[:, 0, 10:18, 10:18] = (labels + 1).float().view(-1, 1, 1)
    make = classify._batches(images, labels, 32, augment=True)
    batches = list(make(torch.Generator().manual_seed(0)))
    assert len(batches) == 200 // 32
    for x, y in batches:
        assert x.shape == (32, 1, 28, 28) and y.dtype == labels.dtype
        torch.testing.assert_close(x.amax((1, 2, 3)), (y + 1).float())
        assert not x.equal(images[:32])


def test_shift_flip_refuses_bad_input():
    with pytest.raises(ShapeError, match=r"images must be \(B, 1, H, W\); got shape \(2, 28, 28\)"):
        classify.shift_flip(torch.zeros(2, 28, 28), torch.Generator())
    with pytest.raises(AttnKitError, match="shift must be >= 0 pixels; got -1"):
        classify.shift_flip(torch.zeros(2, 1, 28, 28), torch.Generator(), shift=-1)


def test_full_preset_regularises_every_model_alike():
    full = classify.PRESETS["full"]
    assert full.augment and full.label_smoothing == pytest.approx(0.1)
    # one Preset serves every model: the CNN gets the same augmentation, smoothing and budget


def test_label_smoothing_enters_the_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="cnn", channels=(4, 8)))
    batch = (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    plain, n = classify._loss(model, batch)
    smooth, _ = classify._loss(model, batch, label_smoothing=0.1)
    logits = model(batch[0])
    want = torch.nn.functional.cross_entropy(logits, batch[1], label_smoothing=0.1)
    assert n == 8 and not torch.isclose(plain, smooth)
    torch.testing.assert_close(smooth, want)


def test_conv_stem_vit_embeds_the_same_grid():
    torch.manual_seed(0)
    cfg = ModelConfig(kind="vit-convstem", d_model=16, layers=2, heads=2, ff=32, stem=(4, 8))
    vit = build_model(cfg)
    assert isinstance(vit, ViT) and "vit-convstem" in MODELS
    convs = [m for m in vit.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert [(m.kernel_size, m.stride) for m in convs] == [((3, 3), (2, 2)), ((3, 3), (2, 2)), ((1, 1), (1, 1))]
    x = torch.randn(3, 1, 28, 28)
    assert vit.tokens(x).shape == (3, 50, 16)  # 7 x 7 patches and the class token, as the plain ViT
    assert vit(x).shape == (3, 10)
    plain = build_model(ModelConfig(kind="vit", d_model=16, layers=2, heads=2, ff=32))
    assert isinstance(plain.patch_embed, torch.nn.Conv2d)  # plain vit keeps the patchify convolution
    # a config written to a run folder (tuples become lists) builds the same model again
    again = ModelConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.stem == (4, 8)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(patch=7), ShapeError, "needs a patch side that is a power of 2"),
    (dict(patch=4, stem=(8,)), AttnKitError, r"needs stem = 2 channel counts .* got \(8,\)"),
    (dict(patch=2, stem=(8, 16)), AttnKitError, "needs stem = 1 channel counts"),
])
def test_conv_stem_config_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        ModelConfig(kind="vit-convstem", **kwargs)


def test_train_refuses_an_unknown_model():
    with pytest.raises(AttnKitError, match="--model 'vit-big' is not known; expected one of vit, vit-neighborhood, "
                                           "vit-convstem, cnn"):
        classify.train(model="vit-big", quick=True, progress=False, log=lambda *_: None)


def test_cli_accepts_every_model_and_refuses_a_bad_name(tmp_path, capsys):
    if not _installed():
        pytest.skip("Debian dataset-fashion-mnist is not installed (run 'make data')")
    out = tmp_path / "run"
    assert main(["train", "vit", "--quick", "--model", "vit-convstem", "--max-steps", "3", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["kind"] == "vit-convstem"
    capsys.readouterr()
    assert main(["train", "vit", "--quick", "--model", "vit-conv", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "vit-conv" in err and "vit-convstem" in err


def test_quick_conv_stem_run_beats_the_majority_baseline(tmp_path):
    if not _installed():
        pytest.skip("Debian dataset-fashion-mnist is not installed (run 'make data')")
    _, results = quick_classifier("vit-convstem", tmp_path / "run")
    test, base = results["test"], results["baselines"]["majority-class"]
    assert test["n"] == 1000 and base["accuracy"] < 0.15
    assert test["accuracy"] > base["accuracy"] + 0.25, results
    assert results["train"]["steps"] >= 10
