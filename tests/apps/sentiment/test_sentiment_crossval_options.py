"""The cross-validation table records how many layers minilm-ft fine-tuned and never mixes settings."""

from __future__ import annotations

import pytest

from attnkit.apps.sentiment.crossval import crossval, markdown, summarize
from attnkit.apps.trainer import write_json
from attnkit.errors import AttnKitError


def _table(path, options):
    fold = {"accuracy": 0.8, "majority": 0.5, "steps": 250, "seconds": 200.0, "stopped": "max_steps",
            "reached": {"0.8": {"step": 100, "seconds": 80.0}}}
    entry = {"per_fold": {"1": fold}, "summary": summarize({"1": fold}), **({"options": options} if options else {})}
    write_json(path, {"data": "sentences", "folds_total": 10, "models": {"minilm-ft": entry}})


def test_folds_of_another_setting_are_refused(tmp_path):
    out = tmp_path / "cv.json"
    _table(out, {"tune_layers": 4})
    with pytest.raises(AttnKitError, match="tune_layers"):
        crossval("sentences", ["minilm-ft"], out, folds=[1], runs=tmp_path / "runs", tune_layers=6)
    table = crossval("sentences", ["minilm-ft"], out, folds=[1], runs=tmp_path / "runs", tune_layers=4)
    assert table["models"]["minilm-ft"]["options"] == {"tune_layers": 4}  # fold 1 is there: nothing ran
    assert not (tmp_path / "runs").exists()
    assert "| minilm-ft, tune_layers=4: " in markdown(table)
    _table(out, None)  # a table written before the option was recorded
    with pytest.raises(AttnKitError, match="tune_layers"):
        crossval("sentences", ["minilm-ft"], out, folds=[1], runs=tmp_path / "runs", tune_layers=4)


@pytest.mark.parametrize("bad", [0, 7])
def test_a_bad_tune_layers_is_refused(tmp_path, bad):
    with pytest.raises(AttnKitError, match="tune_layers"):
        crossval("sentences", ["minilm-ft"], tmp_path / "cv.json", folds=[1], runs=tmp_path / "runs", tune_layers=bad)


def test_tune_layers_is_for_minilm_ft_only(tmp_path):
    from attnkit.apps.sentiment import train

    with pytest.raises(AttnKitError, match="--tune-layers applies to --model minilm-ft"):
        train(data="sentences", model="minilm-attn", tune_layers=4, out=tmp_path / "r")
    with pytest.raises(AttnKitError, match="tune_layers"):
        train(data="sentences", model="minilm-ft", tune_layers=8, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, words", [
    (["--paired", "missing.json:minilm-ft", "missing.json:nbsvm"], "cannot read the table"),
    (["--paired", "nocolon", "x.json:y"], "expected FILE.json:MODEL"),
    (["--markdown", "--out", "missing.json"], "--markdown: cannot read"),
    (["--folds", "0"], "expected integers from 1 to 10"),
])
def test_command_line_mistakes_give_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, args, words):
    from attnkit.apps.sentiment.crossval import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]
