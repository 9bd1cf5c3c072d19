"""The quick GRU runs: with attention they beat the trivial baselines by far; without attention
it still beats them on chrF, and stays far below the attention models on exact match."""

from __future__ import annotations

from translation_helpers import assert_beats_baselines


def test_quick_rnn_luong(quick_run):
    assert_beats_baselines(quick_run("rnn-luong")[1], min_exact=0.3)


def test_quick_rnn_without_attention(quick_run):
    results = quick_run("rnn")[1]
    base = results["baselines"]
    assert results["test"]["chrf"] > max(b["chrf"] for b in base.values()) + 5
    assert results["alignment_error"] is None  # no attention to score


def test_cli_train_then_resume(tmp_path, capsys, attnkit_cache):
    import json

    from attnkit.cli import main

    out = tmp_path / "run"
    base = ["train", "translation", "--model", "rnn", "--quick", "--eval-every", "15", "--out", str(out),
            "--no-progress"]
    assert main([*base, "--max-steps", "30"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 30
    assert main([*base, "--max-steps", "60", "--resume"]) == 0
    assert f"resumed {out} at step 30" in capsys.readouterr().out
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 60 and [e["step"] for e in state["evals"]] == [15, 30, 45, 60]
    assert json.loads((out / "results.json").read_text())["train"]["steps"] == 60
