"""Captioning: vocabulary, KV-cached decoding equal to recomputation, cross-attention weights, the
quick runs of both captioners against the trivial baseline, the attention picture, and the
``attnkit caption`` command with good and bad images."""

from __future__ import annotations

import pytest
import torch

from attnkit.apps.vision.captioner import CaptionConfig, Captioner, Vocabulary
from attnkit.cli import main
from attnkit.errors import ShapeError
from conftest import png_ok


@pytest.fixture(scope="module")
def quick(vision_quick_run):
    """The quick run the demo uses."""
    return vision_quick_run("caption")


def test_vocabulary_round_trip():
    v = Vocabulary()
    text = "a sneaker to the left of an ankle boot, a t-shirt above the ankle boot"
    ids = v.encode(text)
    assert v.stoi["<unk>"] not in ids and v.decode(ids + [2, 5]) == text
    assert v.words("a bag, a coat") == ["a", "bag", ",", "a", "coat"]
    assert v.decode(v.encode("a hat")) == "a <unk>"


def test_cached_decoding_equals_recomputation_and_beam_one_is_greedy():
    from attnkit.apps.translation.decoding import beam_search, greedy

    torch.manual_seed(0)
    v = Vocabulary()
    m = Captioner(CaptionConfig(kind="attention", vocab=len(v), d_model=32, enc_layers=1, dec_layers=2, heads=2,
                                ff=64)).eval()
    x = torch.rand(3, 1, 64, 64)
    mask = torch.ones(3, 1, dtype=torch.bool)
    cached = greedy(m, x, mask, 12)
    assert torch.equal(cached, greedy(m, x, mask, 12, use_cache=False))
    assert torch.equal(beam_search(m, x, mask, 12, beam=1), cached)
    assert beam_search(m, x, mask, 12, beam=3).shape[0] == 3


def test_cross_attention_weights():
    v = Vocabulary()
    m = Captioner(CaptionConfig(kind="attention", vocab=len(v), d_model=32, enc_layers=1, dec_layers=2, heads=2,
                                ff=64)).eval()
    w = m.cross_attention(torch.rand(2, 1, 64, 64), torch.tensor([[1, 4, 5], [1, 6, 7]]))
    assert w.shape == (2, 2, 2, 3, 64)  # (L, H, B, T, N)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 2, 3), atol=1e-5)
    pooled = Captioner(CaptionConfig(kind="pooled", vocab=len(v), d_model=32, enc_layers=1, dec_layers=1, heads=2,
                                     ff=64))
    assert pooled.cross_attention(torch.rand(1, 1, 64, 64), torch.tensor([[1]])) is None
    assert pooled.memory(torch.rand(2, 1, 64, 64)).shape == (2, 1, 32)
    with pytest.raises(ShapeError, match=r"images must be \(B, 1, 64, 64\)"):
        m(torch.rand(2, 3, 64, 64), None, torch.tensor([[1]]))


@pytest.mark.parametrize("stem", [(), (8, 16, 24)])
def test_stem_gives_the_decoder_one_token_per_patch(stem):
    """Both stems turn an S x S canvas into (S/8)^2 tokens of the width; attention and pooled share
    the encoder (same parameters); a config survives its JSON form; a bad stem is refused."""
    import json

    from attnkit.apps.vision.captioner import PatchEncoder, conv_stem
    from attnkit.errors import AttnKitError

    v = Vocabulary()
    for side in (64, 32):
        enc = PatchEncoder(side, 24, 0, 2, 48, 0.0, stem).eval()
        assert enc(torch.rand(3, 1, side, side)).shape == (3, (side // 8) ** 2, 24)
    cfgs = {k: CaptionConfig(kind=k, vocab=len(v), d_model=32, enc_layers=1, dec_layers=1, heads=2, ff=64, stem=stem)
            for k in ("attention", "pooled")}
    nets = {k: Captioner(c) for k, c in cfgs.items()}
    count = {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()}
    assert count["attention"] == count["pooled"]
    assert nets["attention"].memory(torch.rand(2, 1, 64, 64)).shape == (2, 64, 32)
    assert CaptionConfig(**json.loads(json.dumps(cfgs["attention"].to_dict()))) == cfgs["attention"]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in conv_stem(32, stem)) == bool(stem)
    with pytest.raises(AttnKitError, match="stem must be 3 positive channel counts"):
        CaptionConfig(kind="attention", vocab=len(v), stem=(8, 16))


def test_quick_run_beats_the_trivial_baseline(quick):
    path, results = quick
    t, base = results["test"], results["baselines"]["most-frequent-caption"]
    assert t["n"] == 300
    assert t["bleu4"] > base["bleu4"] + 5
    assert t["cider_d"] > base["cider_d"]
    assert t["item_f1"] > base["item_f1"]
    assert set(results["time_to_valid_relation_accuracy"]) == {"0.5", "0.8", "0.9"}
    assert results["pictures"] and all(png_ok(path / p) for p in results["pictures"])
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "results.json"):
        assert (path / name).is_file()


def test_caption_command_and_eval(quick, tmp_path, capsys):
    from attnkit.apps.vision.common import load_scenes, write_image

    path, _ = quick
    scene = load_scenes("test", 300)[5]
    image = write_image(scene.image, tmp_path / "scene.png")
    pic = tmp_path / "attention.png"
    assert main(["caption", str(path), str(image), "--out", str(pic)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] and out[1] == f"wrote {pic}" and png_ok(pic)
    assert main(["caption", str(path), str(image), "--beam", "3"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["eval", "caption", str(path)]) == 0
    assert "relation accuracy" in capsys.readouterr().out


def _bad_images(tmp_path):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (64, 64)).save(rgb)
    small = tmp_path / "small.png"
    Image.new("L", (28, 28)).save(small)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    return [(str(tmp_path / "missing.png"), "does not exist"), (str(rgb), "has 3 channels (RGB); expected 1"),
            (str(small), "is 28x28 pixels; expected 64x64"), (str(text), "cannot be read")]


def test_caption_command_refuses_bad_images(quick, tmp_path, capsys):
    path, _ = quick
    for image, message in _bad_images(tmp_path):
        assert main(["caption", str(path), image]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: image ") and message in err[0], err
    assert main(["caption", str(tmp_path), _bad_images(tmp_path)[1][0]]) == 2
    assert "has no config.json" in capsys.readouterr().err
