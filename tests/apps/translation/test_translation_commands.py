"""Bad input to train, eval, translate, demo and apps: one ``error:`` line, exit code 2, before any work."""

from __future__ import annotations

import json

import pytest

from attnkit.cli import main


@pytest.fixture
def no_training(monkeypatch):
    import attnkit.apps.translation as tr
    import attnkit.apps.translation.task as task

    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the arguments were checked")

    for module, name in [(tr, "train"), (tr, "evaluate_run"), (task, "train"), (task, "evaluate_run")]:
        monkeypatch.setattr(module, name, forbidden)


def run_bad(argv, capsys) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (argv, captured)
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _fake_run(tmp_path, task="translation"):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": task}))
    (run / "model.safetensors").write_bytes(b"")
    return run


CASES = [
    (["train", "vision"], "TASK vision; expected one of translation"),
    (["train", "translation", "--model", "gpt"], "--model gpt; expected one of transformer, rnn, rnn-bahdanau"),
    (["train", "translation", "--data", "news"], "--data news; expected one of numbers, number-lists, bible"),
    (["train", "translation", "--lang", "es"], "--lang es; expected one of fr, de"),
    (["train", "translation", "--budget-minutes", "0"], "--budget-minutes 0; expected a number of minutes > 0"),
    (["train", "translation", "--budget-minutes", "soon"], "--budget-minutes soon; expected a number of minutes"),
    (["train", "translation", "--max-steps", "0"], "--max-steps 0; expected an integer >= 1"),
    (["train", "translation", "--out", "{file}"], "is a file; expected a folder"),
    (["train", "translation", "--resume"], "--resume needs --out with a checkpoint; got no --out"),
    (["train", "translation", "--resume", "--out", "{dir}"], "has no last.safetensors"),
    (["train", "translation", "--out", "{foreign}"], "already holds a run; expected a new folder, or --resume"),
    (["train", "translation", "--eval-every", "0"], "--eval-every 0; expected an integer >= 1"),
    (["eval", "translation", "{missing}"], "is not a folder; expected a run folder"),
    (["eval", "translation", "{dir}"], "has no config.json"),
    (["eval", "vision", "{dir}"], "TASK vision; expected one of translation"),
    (["eval", "translation", "{dir}", "--beam", "0"], "--beam 0; expected an integer from 1 to 64"),
    (["eval", "translation", "{dir}", "--length-penalty", "-1"], "--length-penalty -1; expected a number >= 0"),
    (["eval", "translation", "{foreign}"], "is a 'sentiment' run; expected a translation run"),
    (["translate", "{missing}", "one"], "is not a folder; expected a run folder"),
    (["translate", "{dir}", "   "], "TEXT '   ' is empty; expected some text"),
    (["translate", "{dir}", "one", "--out", "{dir}/a.txt"], "expected a picture name ending in"),
    (["demo", "summaries"], "TASK summaries; expected one of translation, "),
    (["demo", "translation", "--sentence", "hi"], "--sentence is for the four-steps demo"),
]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_input_is_one_error_line(argv, expected, capsys, tmp_path, no_training):
    (tmp_path / "a_file").write_text("x")
    foreign = _fake_run(tmp_path, "sentiment")
    fill = {"missing": str(tmp_path / "missing"), "dir": str(tmp_path), "file": str(tmp_path / "a_file"),
            "foreign": str(foreign)}
    line = run_bad([a.format(**fill) for a in argv], capsys)
    assert expected.format(**fill) in line, line


def test_missing_package_names_the_install_command(monkeypatch, capsys, no_training):
    from attnkit.apps.translation import data

    monkeypatch.setattr(data, "installed", lambda name: name != "num2words")
    line = run_bad(["train", "translation", "--quick"], capsys)
    assert "'num2words'" in line and "make data" in line
    monkeypatch.setattr(data, "installed", lambda name: name != "sacrebleu")
    line = run_bad(["train", "translation", "--quick"], capsys)
    assert "'sacrebleu'" in line and "make install" in line


def test_apps_lists_translation_without_runs(capsys, tmp_path):
    assert main(["apps", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "translation:" in out and "attnkit translate RUN" in out and "runs in" in out
