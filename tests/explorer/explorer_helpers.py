"""Shared by the explorer tests: a server on a free loopback port, a small translation run folder."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
