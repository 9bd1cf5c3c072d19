"""Shared by the explorer tests: a server on a free loopback port, a small translation run folder."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, installed by make data
TIMEOUT_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def browser_page(app, width: int = 1300, height: int = 1000):
    """A headless Chromium page on ``app`` (served on loopback) once the page says it is ready;
    yields ``(page, url, errors)``, ``errors`` collecting the page's uncaught JavaScript errors."""
    import pytest

    from conftest import require_data

    require_data(CHROMIUM.exists(), "Debian chromium", "apt-get install chromium")
    pytest.importorskip("playwright", reason="playwright (dev extra) is not installed")
    from playwright.sync_api import sync_playwright

    with running_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector('body[data-ready="1"]', timeout=TIMEOUT_MS)
            yield page, url, errors
        finally:
            browser.close()


@contextmanager
def running_server(app, port: int | None = None):
    """``app`` served by uvicorn in a thread on 127.0.0.1; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the explorer server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def small_translation_run(folder: Path, *, steps: int = 0) -> Path:
    """A translation run folder (config.json, tokenizer.json, model.safetensors) holding a small
    transformer, trained for ``steps`` steps on number words (0: initial weights; enough to show
    attention, not to translate well)."""
    from attnkit.apps.trainer import save_weights, write_json
    from attnkit.apps.translation import ModelConfig, SubwordTokenizer, build_model, number_pairs

    folder.mkdir(parents=True, exist_ok=True)
    pairs = number_pairs("fr", "train", 400, seed=0)
    tok = SubwordTokenizer.train((t for p in pairs for t in (p.src, p.tgt)), 200)
    tok.save(folder / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(kind="transformer", vocab=tok.vocab_size, d_model=32, layers=2, heads=2, ff=64, dropout=0.0,
                      max_len=64)
    model = build_model(cfg)
    if steps:
        from attnkit.apps.translation.tokenizer import BOS

        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(steps):
            batch = pairs[(step * 32) % 400:(step * 32) % 400 + 32]
            src, src_mask = tok.batch([p.src for p in batch])
            tgt, _ = tok.batch([p.tgt for p in batch])
            tgt_in = torch.cat([torch.full((tgt.shape[0], 1), BOS), tgt[:, :-1]], 1)
            logits = model(src, src_mask, tgt_in)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    save_weights(folder / "model.safetensors", model.state_dict())
    write_json(folder / "config.json", {"task": "translation", "data": "numbers", "lang": "fr", "preset": "test",
                                        "model": cfg.to_dict()})
    return folder
