"""The summarization command line: train / eval / summarize refuse bad input with one ``error:``
line and exit code 2, before any work; summarize reads text or a file and draws its picture."""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.apps.summarization import task as task_mod
from attnkit.apps.summarization.models import SummConfig, WordVocab, build_model
from attnkit.apps.trainer import save_weights
from attnkit.cli import main
from attnkit.commands.summarize import MAX_WORDS

WORDS = "the a of to list show files print directory contents command line lines in reverse order each file".split()


def _run(tmp_path, kind: str = "pointer"):
    """A run folder holding an untrained model (enough for the command line's checks)."""
    run = tmp_path / f"run-{kind}"
    run.mkdir()
    vocab = WordVocab(["<pad>", "<s>", "</s>", "<unk>", *WORDS])
    vocab.save(run / "vocab.json")
    torch.manual_seed(0)
    cfg = SummConfig(kind, vocab=len(vocab), d_model=32, emb_dim=16, layers=1, heads=2, ff=64, dropout=0.0,
                     max_len=40)
    save_weights(run / "model.safetensors", build_model(cfg).state_dict())
    (run / "config.json").write_text(json.dumps({"task": "summarization", "data": "all", "preset": "quick",
                                                 "model": cfg.to_dict(), "src_len": 24, "tgt_len": 8,
                                                 "parameters": 1}))
    return run


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the arguments were checked")

    monkeypatch.setattr(task_mod, "train", forbidden)
    monkeypatch.setattr(task_mod, "evaluate_run", forbidden)
    import attnkit.apps.summarization as pkg

    monkeypatch.setattr(pkg, "train", forbidden)
    monkeypatch.setattr(pkg, "evaluate_run", forbidden)


def run_bad(argv, capsys) -> str:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 2, (argv, captured)
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_command_lines(tmp_path, capsys, no_training):
    run = _run(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    huge = tmp_path / "huge.txt"
    huge.write_text("word " * (MAX_WORDS + 1))
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"task": "translation"}))
    (other / "model.safetensors").write_bytes(b"")
    cases = [
        (["train", "summarization", "--model", "bart"], "--model bart; expected one of pointer, transformer, rnn"),
        (["train", "summarization", "--data", "news"], "--data news; expected one of all, docstrings, manpages, dpkg"),
        (["eval", "summarization", tmp_path / "missing"], "is not a folder; expected a run folder"),
        (["eval", "summarization", other], "is a 'translation' run; expected a summarization run"),
        (["summarize", run, ""], "is empty; expected some text to summarize"),
        (["summarize", run, empty], "is empty; expected some text to summarize"),
        (["summarize", run, huge], f"has {MAX_WORDS + 1} words; expected 1 to {MAX_WORDS} words"),
        (["summarize", run, "word " * (MAX_WORDS + 1)], f"expected 1 to {MAX_WORDS} words"),
        (["summarize", run, binary], "is not UTF-8 text"),
        (["summarize", run, tmp_path], "is a folder; expected text or a text file"),
        (["summarize", run, "-- ,,, --"], "has no words"),
        (["summarize", tmp_path / "missing", "some text"], "is not a folder; expected a run folder"),
        (["summarize", other, "some text"], "expected a summarization run"),
        (["summarize", run, "some text", "--out", tmp_path / "pic.txt"], "expected a picture name ending in"),
        (["summarize", run, "some text", "--out", tmp_path / "no" / "pic.png"], "does not exist"),
        (["summarize", run, "some text", "--beam", "0"], "--beam 0; expected an integer from 1 to 64"),
        (["summarize", run, "some text", "--length-penalty", "abc"], "--length-penalty abc; expected a number >= 0"),
        (["eval", "summarization", run, "--beam", "65"], "--beam 65; expected an integer from 1 to 64"),
    ]
    for argv, expected in cases:
        assert expected in run_bad(argv, capsys), argv


@pytest.mark.parametrize("kind", ["pointer", "rnn"])
def test_summarize_text_file_and_picture(tmp_path, capsys, kind):
    run = _run(tmp_path, kind)
    text = "List each file in reverse order, printing the zyzzyva lines of every directory " * 3
    assert main(["summarize", str(run), text]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "note: the model reads the first 24 of the 39 words" in out.err
    source = tmp_path / "input.txt"
    source.write_text(text)
    pic = tmp_path / "pic.png"
    assert main(["summarize", str(run), str(source), "--out", str(pic)]) == 0
    printed = capsys.readouterr().out
    if kind == "rnn":
        assert "no picture: the rnn model has no attention to show" in printed and not pic.exists()
    else:
        assert f"wrote {pic}" in printed and pic.stat().st_size > 5000
        from matplotlib.image import imread

        h, w = imread(str(pic)).shape[:2]
        assert h <= 2400 and w <= 2400


def test_apps_lists_summarization(capsys):
    assert main(["apps", "--runs", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "summarization: one-line summaries" in out
    assert "data docstrings:" in out and "data dpkg:" in out
