"""The explorer's vision mode: a ViT on Fashion-MNIST test images and the captioner on held-out
scenes, through the JSON API (Starlette's TestClient) and in a real browser (Debian's chromium).
The numbers served and drawn must be the models' own (attnkit.apps.vision)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is not installed")

from explorer_helpers import TIMEOUT_MS, browser_page  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from attnkit.explorer import create_app  # noqa: E402


@pytest.fixture(scope="module")
def app(attnkit_cache, need_data_module):
    """The explorer (no run folders: the vision mode trains its quick runs into the session cache)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    application = create_app()
    mode = application.state.explorer.mode("vision")
    mode.train()  # trains the quick ViT and captioner once (about 20 s on 2 quiet cores)
    yield application
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def need_data_module():
    from attnkit.apps.vision.data import data_status
    from conftest import require_data

    require_data(data_status()["fashion-mnist"] == "installed", "Debian dataset-fashion-mnist", "make data")


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def decode(m: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(m["data"]), np.float16).astype(np.float32).reshape(m["shape"])


def run(client, **inputs) -> dict:
    r = client.post("/api/run", json={"mode": "vision", "inputs": inputs})
    assert r.status_code == 200, r.json()
    return r.json()


def matrix(client, key, view, layer=0, head=0, cells=2048) -> np.ndarray:
    r = client.get("/api/matrix", params={"key": key, "view": view, "layer": layer, "head": head, "cells": cells})
    assert r.status_code == 200, r.json()
    return decode(r.json())


def test_vit_patch_attention_rollout_and_picture(client, app):
    from attnkit.apps.vision.classify import classify_image
    from attnkit.apps.vision.data import CLASSES, load_fashion_mnist
    from attnkit.apps.vision.vit import rollout_maps
    from attnkit.interpret import capture_attention

    index = 7
    a = run(client, model="vit", index=index)
    vit = app.state.explorer.mode("vision").vit()
    images, labels = load_fashion_mnist("test")
    image = images[index]
    cfg = vit.model.config
    att = a["views"]["attention"]
    assert (att["layers"], att["heads"]) == (cfg.layers, cfg.heads)
    assert att["rows"][0] == "[CLS]" and len(att["rows"]) == cfg.grid ** 2 + 1 == len(att["cols"])
    x = ((image.float() / 255 - 0.2860) / 0.3530).view(1, 1, 28, 28)
    with torch.no_grad(), capture_attention(vit.model) as cap:
        vit.model(x)
    ref = cap.stack()[:, 0]  # (L, H, T, T)
    for layer in range(cfg.layers):
        for head in range(cfg.heads):
            np.testing.assert_allclose(matrix(client, a["key"], "attention", layer, head), ref[layer, head].numpy(),
                                       atol=2e-3)
    # the rollout's class-token row over the patches is the application's own rollout map
    roll = matrix(client, a["key"], "rollout")
    np.testing.assert_allclose(roll[0, 1:], rollout_maps(vit.model, x)[0].flatten().numpy(), atol=2e-3)
    np.testing.assert_allclose(roll.sum(-1), 1.0, atol=5e-3)
    probs = classify_image(vit.model, image.float() / 255)
    nums = a["info"]["numbers"]
    assert nums["predicted"] == CLASSES[int(probs.argmax())] and nums["true class"] == CLASSES[int(labels[index])]
    pic = a["info"]["picture"]
    assert (pic["kind"], pic["width"], pic["height"], pic["grid"]) == ("image", 28, 28, [cfg.grid, cfg.grid])
    assert pic["patches"] == {"attention": 1, "rollout": 1}
    pixels = np.frombuffer(base64.b64decode(pic["data"]), np.uint8).reshape(28, 28)
    lo, hi = float(image.min()), float(image.max())
    np.testing.assert_array_equal(pixels, np.round(255 * (image.numpy() - lo) / (hi - lo)).astype(np.uint8))


def test_caption_cross_attention_is_the_models(client, app):
    from attnkit.apps.translation.tokenizer import BOS, EOS
    from attnkit.apps.vision.caption import caption_images

    mode = app.state.explorer.mode("vision")
    a = run(client, model="caption", scene=4)
    lr, scene = mode.captioner(), mode.scenes()[4]
    x = scene.image[None, None].float() / 255
    text = caption_images(lr.model, lr.vocab, x)[0]
    assert a["info"]["numbers"]["generated caption"] == text
    assert a["info"]["numbers"]["true caption"] == scene.caption
    cross = a["views"]["cross"]
    assert cross["rows"] == [*lr.vocab.words(text), "</s>"]
    assert len(cross["cols"]) == lr.model.encoder.grid ** 2
    ids = lr.vocab.encode(text) + [EOS]
    ref = lr.model.cross_attention(x, torch.tensor([[BOS, *ids[:-1]]]))[:, :, 0]  # (L, H, T, N)
    for head in range(cross["heads"]):
        m = matrix(client, a["key"], "cross", cross["layers"] - 1, head)
        np.testing.assert_allclose(m, ref[-1, head].numpy(), atol=2e-3)
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=5e-3)
    dec = matrix(client, a["key"], "decoder", 0, 0)
    assert np.allclose(np.triu(dec, 1), 0) and np.allclose(dec.sum(-1), 1.0, atol=5e-3)  # causal
    assert a["info"]["picture"]["patches"] == {"cross": 0, "encoder": 0}
    assert a["info"]["picture"]["width"] == lr.side


def test_block_aggregation_overview_and_selection(client):
    a = run(client, model="vit", index=0)
    full = matrix(client, a["key"], "attention", 1, 0)
    r = client.get("/api/matrix", params={"key": a["key"], "view": "attention", "layer": 1, "head": 0, "cells": 10})
    pooled = r.json()
    assert pooled["group"] == [5, 5] and pooled["shape"] == [10, 10]
    np.testing.assert_allclose(decode(pooled)[0, 0], full[:5, :5].sum(1).mean(), atol=2e-3)
    o = client.get("/api/overview", params={"key": a["key"], "view": "attention", "cells": 16}).json()
    assert o["shape"][:2] == [a["views"]["attention"]["layers"], a["views"]["attention"]["heads"]]
    sel = client.post("/api/select", json={"key": a["key"], "view": "attention", "layer": 1, "head": 0,
                                           "tokens": [0, 9]}).json()
    np.testing.assert_allclose(sel["rows"], full[[0, 9]].sum(0), atol=5e-3)


def test_the_other_models_field_does_not_split_analyses(client):
    a = run(client, model="vit", index=2, scene=5)
    b = run(client, model="vit", index=2, scene=9)
    c = run(client, model="vit", index=3)
    assert a["key"] == b["key"] != c["key"]


@pytest.mark.parametrize("inputs, field", [
    ({"model": "vit", "index": 10_000}, "index"),
    ({"model": "vit", "index": -1}, "index"),
    ({"model": "vit", "index": "3"}, "index"),
    ({"model": "vit", "index": 2.5}, "index"),
    ({"model": "caption", "scene": 300}, "scene"),
    ({"model": "resnet"}, "model"),
    ({"model": "vit", "image": 3}, "image"),
])
def test_bad_inputs_get_a_json_error_naming_the_field(client, inputs, field):
    r = client.post("/api/run", json={"mode": "vision", "inputs": inputs})
    assert r.status_code == 422 and r.json()["error"].startswith(f"unknown input {field!r}" if field == "image"
                                                                 else field)
    assert client.get("/api/modes").status_code == 200  # and the server goes on


def test_run_folders_given_to_serve(app):
    from attnkit.errors import AttnKitError
    from attnkit.explorer import Explorer

    mode = app.state.explorer.mode("vision")
    vit, cap = mode.vit().run.path, mode.captioner().run.path
    ex = Explorer({"vit": vit, "caption": cap})
    given = ex.mode("vision")
    assert (given.vit().run.path, given.captioner().run.path) == (vit, cap)
    assert "translation" not in ex.modes  # the translation mode still needs its own run
    with pytest.raises(AttnKitError, match="vit"):
        Explorer({"vit": cap})  # a captioner run where a ViT run is expected: refused at start


def test_warm_trains_nothing(app, tmp_path, monkeypatch):
    """The server starts at once: warm() loads cached runs only; an empty cache waits for the first request."""
    from attnkit.explorer.modes.vision import VisionMode

    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path))
    fresh = VisionMode()
    fresh.warm()
    assert fresh._vit is None and fresh._caption is None and not any(tmp_path.glob("runs/*"))
    monkeypatch.undo()
    cached = VisionMode()
    cached.warm()
    assert cached._vit is not None and cached._caption is not None


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def page(app, need_data_module):
    with browser_page(app) as (pg, url, errors):
        yield pg, url
    assert errors == []


def run_on_page(pg, view: str, **fields) -> dict:
    runs = pg.evaluate("explorer.state.runs")
    for name, value in fields.items():
        if name == "model":
            pg.select_option(f"select[name={name}]", value)
        else:
            pg.fill(f"input[name={name}]", str(value))
    pg.click("#run")
    pg.wait_for_function(f"explorer.state.runs > {runs}", timeout=TIMEOUT_MS)
    pg.wait_for_function(f"(h => !!h && h.view === {view!r})(explorer.heatmap({view!r}))", timeout=TIMEOUT_MS)
    return pg.evaluate("explorer.state.analysis")


def test_vision_in_the_browser(page, client, tmp_path):
    pg, url = page
    pg.click('#modes button[data-mode="vision"]')
    assert pg.is_visible("input[name=index]") and not pg.is_visible("input[name=scene]")
    a = run_on_page(pg, "attention", model="vit", index=11)
    t = pg.evaluate("explorer.timings")
    print(f"\nvision (ViT, image 11): first heatmap {t['first_heatmap_ms']:.0f} ms after 'Show attention' "
          f"(analysis {t['run_ms']:.0f} ms)")
    shown = pg.evaluate("explorer.heatmap('attention')")
    values = np.array(shown["values"], dtype=np.float32).reshape(shown["shape"])
    np.testing.assert_array_equal(values, matrix(client, a["key"], "attention", shown["layer"], shown["head"]))
    # the image beside the heatmap carries the first row (the class token) over the 7 x 7 patches
    pg.wait_for_selector('#picture[data-ready="1"]', timeout=TIMEOUT_MS)
    pic = pg.evaluate("explorer.picture()")
    assert pic["kind"] == "image" and pic["label"] == "[CLS]"
    np.testing.assert_allclose(pic["overlay"], values[0, 1:], atol=1e-6)
    heat = pg.locator("#heat-attention")
    box, n = heat.bounding_box(), shown["shape"][0]
    heat.hover(position={"x": 3.5 * box["width"] / n, "y": 20.5 * box["height"] / n})
    pg.wait_for_function("explorer.picture().label === explorer.state.analysis.views.attention.rows[20]",
                         timeout=TIMEOUT_MS)
    np.testing.assert_allclose(pg.evaluate("explorer.picture().overlay"), values[20, 1:], atol=1e-6)
    assert pg.text_content("#hover").endswith(f"{values[20, 3]:.4f}")

    pg.select_option("select[name=model]", "caption")
    assert pg.is_visible("input[name=scene]")
    b = run_on_page(pg, "cross", model="caption", scene=2)
    t = pg.evaluate("explorer.timings")
    print(f"vision (captioner, scene 2): first heatmap {t['first_heatmap_ms']:.0f} ms (analysis {t['run_ms']:.0f} ms)")
    shown = pg.evaluate("explorer.heatmap('cross')")
    values = np.array(shown["values"], dtype=np.float32).reshape(shown["shape"])
    np.testing.assert_array_equal(values, matrix(client, b["key"], "cross", shown["layer"], shown["head"]))
    pg.wait_for_function("explorer.picture() && explorer.picture().view === 'cross'", timeout=TIMEOUT_MS)
    np.testing.assert_allclose(pg.evaluate("explorer.picture().overlay"), values[0], atol=1e-6)
    pg.screenshot(path=str(tmp_path / "explorer-vision.png"), full_page=True)

    # an index out of range: the form's own limits hold it back (the server refuses it too, tested above)
    runs = pg.evaluate("explorer.state.runs")
    pg.fill("input[name=scene]", "999")
    pg.click("#run")
    assert pg.evaluate("document.querySelector('input[name=scene]').validity.rangeOverflow")
    assert pg.evaluate("explorer.state.runs") == runs and pg.evaluate("explorer.state.analysis.key") == b["key"]


def test_encode_picture_refuses_bad_pictures():
    from attnkit.errors import AttnKitError, ShapeError
    from attnkit.explorer.api import encode_picture

    with pytest.raises(ShapeError, match="height, width"):
        encode_picture(torch.zeros(5), "image")
    with pytest.raises(AttnKitError, match="non-finite"):
        encode_picture(torch.tensor([[0.0, float("nan")]]), "image")
    flat = encode_picture(torch.full((2, 3), 7.0), "image")  # a constant picture is all zeros, not NaN
    assert base64.b64decode(flat["data"]) == bytes(6) and flat["range"] == [7.0, 7.0]
