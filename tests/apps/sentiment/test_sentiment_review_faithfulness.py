"""The deletion test of the review models at the level of sentences: the attention ranking is the
model's own sentence weights, deletions remove sentences from the input, and the lexical score of
``han-lex`` follows the deleted sentences."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import Tensor, nn

from attnkit.apps.sentiment.batches import review_batch
from attnkit.apps.sentiment.faithfulness import KS, METHODS, aopc_picture, review_deletion, text_without
from attnkit.apps.sentiment.models import HAN, ModelConfig
from attnkit.errors import AttnKitError


class _Chosen(nn.Module):
    """A review model whose logit margin is the sum of feature 0 over all tokens and whose
    sentence weights are a softmax of feature 1 of each sentence's first token: what the
    attention ranking must follow is known, and it is not what drives the prediction."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch: dict[str, Tensor]):
        x, mask, smask = batch["states"], batch["mask"], batch["sent_mask"]
        margin = self.scale * (x[..., 0] * mask).sum((1, 2))
        sw = torch.softmax(x[:, :, 0, 1].masked_fill(~smask, -1e9), -1)
        return torch.stack([torch.zeros_like(margin), margin], -1), (mask.float(), sw)


def _reviews(n: int = 6, dim: int = 4) -> list[list[Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(2 + (i + j) % 3, dim, generator=g) for j in range(4 + i % 3)] for i in range(n)]


def _p_pred(model, sents, lex=None) -> Tensor:
    batch = review_batch([sents])
    if lex is not None:
        batch["lex"] = torch.tensor([lex])
    with torch.no_grad():
        return torch.softmax(model(batch)[0], -1)[0]


def test_attention_curve_deletes_the_models_own_most_attended_sentences():
    model = _Chosen()
    reviews = _reviews()
    res = review_deletion(model, reviews, ks=(1, 2), log=lambda *_: None)
    for k in (1, 2):
        expected, lowest = [], []
        for r in reviews:
            p = _p_pred(model, r)
            c = int(p.argmax())
            order = sorted(range(len(r)), key=lambda j: -float(r[j][0, 1]))  # feature 1 of the first token
            top = set(order[:k])
            low = set(order[-k:])
            expected.append(float(p[c] - _p_pred(model, [x for j, x in enumerate(r) if j not in top])[c]))
            lowest.append(float(p[c] - _p_pred(model, [x for j, x in enumerate(r) if j not in low])[c]))
        assert res["curves"]["attention"][str(k)] == pytest.approx(statistics.fmean(expected), abs=1e-6)
        assert res["curves"]["attention"][str(k)] != pytest.approx(statistics.fmean(lowest), abs=1e-3)
    assert res["unit"] == "sentences" and res["n"] == len(reviews) and set(res["aopc"]) == set(METHODS)
    # gradient x input of this linear margin is (1 - p) * the sum of feature 0 of the sentence (up to the
    # predicted class's sign): it ranks the sentences that push towards the prediction first, so it drops most
    assert res["aopc"]["grad_x_input"] > res["aopc"]["random"]


def test_han_lex_attention_curve_and_lexical_score_of_the_shortened_review():
    torch.manual_seed(0)
    net = HAN(ModelConfig("han-lex", dim=16, hidden=8, attn_dim=8)).eval()
    reviews = _reviews(5, dim=16)
    asked: list[tuple[int, tuple[int, ...]]] = []

    def lex(i: int, deleted) -> float:
        asked.append((i, tuple(deleted)))
        return 0.5 * i - 0.3 * len(deleted)

    res = review_deletion(net, reviews, ks=(1, 3), lex=lex, log=lambda *_: None)
    drops = []
    for i, r in enumerate(reviews):
        batch = review_batch([r])
        batch["lex"] = torch.tensor([lex(i, ())])
        with torch.no_grad():
            logits, (_, sw) = net(batch)
        p = torch.softmax(logits, -1)[0]
        c = int(p.argmax())
        top = int(sw[0].argmax())
        drops.append(float(p[c] - _p_pred(net, [x for j, x in enumerate(r) if j != top], lex(i, (top,)))[c]))
        assert (i, (top,)) in asked  # the score was asked for the review without its most attended sentence
    assert res["curves"]["attention"]["1"] == pytest.approx(statistics.fmean(drops), abs=1e-6)
    assert all(len(d) <= len(reviews[i]) - 1 for i, d in asked)  # at most all but one sentence deleted


def test_text_without_maps_the_models_sentences_to_the_text():
    sents = [f"s{q}" for q in range(10)]
    assert text_without(sents, [0, 2], 48) == "\n".join(s for q, s in enumerate(sents) if q not in (0, 2))
    # a review longer than the model reads: it sees sentences 0-1 and 8-9 (max 4); its sentence 2 is s8
    assert text_without(sents, [1, 2], 4).split("\n") == ["s0", "s2", "s3", "s4", "s5", "s6", "s7", "s9"]
    with pytest.raises(AttnKitError, match="outside the 4 sentences"):
        text_without(sents, [4], 4)


def test_review_deletion_refuses_bad_input_and_draws(tmp_path):
    model = _Chosen()
    with pytest.raises(AttnKitError, match="at least one sentence each"):
        review_deletion(model, [[torch.randn(2, 4)], []], log=lambda *_: None)
    with pytest.raises(AttnKitError, match="ks must be positive ints"):
        review_deletion(model, _reviews(), ks=(0, 1), log=lambda *_: None)
    res = review_deletion(model, _reviews(3), ks=KS, log=lambda *_: None)
    assert all(p.requires_grad for p in model.parameters())  # restored after the test
    res["model"] = "han"
    path = aopc_picture(res, tmp_path / "f.png")
    assert path.stat().st_size > 5000


def test_a_missing_run_gives_one_error_line_and_exit_2(tmp_path, capsys):
    from attnkit.apps.sentiment.faithfulness import main

    assert main([str(tmp_path / "no-run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no-run" in err[0]
