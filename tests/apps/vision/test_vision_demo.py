"""``attnkit demo vision``: one held-out scene captioned and detected, with its pictures (it reuses
the quick runs the caption and detect tests cached in this session, or trains them)."""

from __future__ import annotations

import torch

from attnkit.apps.vision.data import data_status
from attnkit.cli import main


def test_demo_vision(attnkit_cache, tmp_path, capsys):
    from conftest import require_data

    require_data(data_status()["fashion-mnist"] == "installed", "Debian dataset-fashion-mnist", "make data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "vision", "--out", str(tmp_path / "demo.png")]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "true caption:" in out and "generated caption:" in out and "detected" in out
    for name in ("demo.png", "demo-scene.png", "demo-detect.png"):
        path = tmp_path / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "demo.png").stat().st_size > 5000 and (tmp_path / "demo-detect.png").stat().st_size > 5000
