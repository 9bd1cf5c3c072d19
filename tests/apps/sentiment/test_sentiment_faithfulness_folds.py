"""The deletion test summarised across folds: means, intervals and paired differences computed
from the per-fold files, and bad folders refused with one error line."""

from __future__ import annotations

import json
import statistics

import pytest

from attnkit.apps.sentiment.faithfulness_folds import fold_results, main, summarize_folds
from attnkit.errors import AttnKitError

AOPC = {1: (0.10, 0.30, 0.02), 2: (0.05, 0.28, 0.03), 3: (0.12, 0.31, 0.01), 4: (0.02, 0.29, 0.04)}


def _write(root, folds=AOPC, name="faithfulness"):
    for f, (att, gxi, rnd) in folds.items():
        d = root / f"fold-{f}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_text(json.dumps({"aopc": {"attention": att, "grad_x_input": gxi, "random": rnd}}))
    return root


def test_summary_is_the_mean_and_paired_difference_of_the_folds(tmp_path):
    s = summarize_folds(_write(tmp_path))
    assert s["folds"] == [1, 2, 3, 4]
    assert s["attention"]["mean"] == pytest.approx(statistics.fmean(v[0] for v in AOPC.values()))
    low, high = s["random"]["ci95"]
    assert low < s["random"]["mean"] < high
    diff = s["attention_minus_random"]
    assert diff["per_fold"] == pytest.approx([a - r for a, _, r in AOPC.values()])
    assert diff["better"] == 3  # fold 4: attention 0.02 against random 0.04
    assert s["attention_minus_grad_x_input"]["better"] == 0


def test_command_prints_the_table_and_refuses_empty_folders(tmp_path, capsys):
    _write(tmp_path / "a")
    _write(tmp_path / "b", {1: (0.2, 0.1, 0.0), 2: (0.3, 0.1, 0.1)}, name="faithfulness-keep-lex")
    assert main([str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 3 and "| 4 | 0.072 [" in out
    assert main([str(tmp_path / "b"), "--name", "faithfulness-keep-lex"]) == 0
    assert "| 2 | 0.250 [" in capsys.readouterr().out
    for argv, msg in [([str(tmp_path / "b")], "no fold-*/faithfulness.json under"),
                      ([str(tmp_path / "missing")], "no fold-*/faithfulness.json under")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_a_file_without_a_ranking_is_refused(tmp_path):
    (tmp_path / "fold-1").mkdir()
    (tmp_path / "fold-1" / "faithfulness.json").write_text(json.dumps({"aopc": {"attention": 0.1}}))
    with pytest.raises(AttnKitError, match=r"has no AOPC for \['grad_x_input', 'random'\]"):
        fold_results(tmp_path)
