"""The quick GRU + Bahdanau run beats the trivial baselines and resumes from its checkpoint."""

from __future__ import annotations

import json

from translation_helpers import assert_beats_baselines


def test_quick_rnn_bahdanau(quick_run):
    run, results = quick_run("rnn-bahdanau")
    assert_beats_baselines(results, min_exact=0.3)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "rnn-bahdanau" and config["sizes"] == {"train": 3000, "valid": 150, "test": 300}
    assert results["alignment_error"]["best"] < 0.8
    assert {p for p in results["pictures"]} >= {"alignment-0.png"}
