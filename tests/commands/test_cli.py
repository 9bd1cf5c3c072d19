"""The command line: help, demo (the README's first command) and the quick benchmark."""

from __future__ import annotations

import pytest

from attnkit.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "bench"):
        assert cmd in out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: attnkit" in capsys.readouterr().out


def test_demo_prints_four_steps_and_writes_heatmap(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    for step in ("1. project", "2. score", "3. weight", "4. combine", "every implementation vs reference"):
        assert step in out
    assert "reference      max|err|  0.00e+00" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_empty_sentence(capsys, tmp_path):
    assert main(["demo", "--sentence", "   ", "--out", str(tmp_path / "unused.png")]) == 2
    assert capsys.readouterr().err == "error: --sentence '   ' is empty; expected some text\n"
    assert not (tmp_path / "unused.png").exists()


def test_bench_quick(capsys, tmp_path):
    """sdpa is always timed as the baseline, also when --impls leaves it out."""
    js = tmp_path / "b.json"
    assert main(["bench", "--lengths", "32", "16", "--impls", "reference", "--repeats", "1", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| T | causal | sdpa ms | reference ms | reference/sdpa |" in out
    assert "| 32 | True |" in out and "| 16 | False |" in out
    rows = __import__("json").loads(js.read_text())["rows"]
    assert {(r["T"], r["impl"]) for r in rows} == {(t, i) for t in (32, 16) for i in ("sdpa", "reference")}


def test_parser_builds():
    assert build_parser().prog == "attnkit"
