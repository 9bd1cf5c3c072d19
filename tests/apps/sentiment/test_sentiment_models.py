"""The attention-pooling head and the models on synthetic inputs (no data needed)."""

from __future__ import annotations

import pytest
import torch

from attnkit.apps.sentiment.models import HAN, AttentionPool, ModelConfig, build_model
from attnkit.errors import AttnKitError


def test_attention_pool_is_a_distribution_over_real_tokens():
    torch.manual_seed(0)
    pool = AttentionPool(16, heads=2)
    x = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 4, 1])
    mask = torch.arange(7)[None] < lengths[:, None]  # (3, 7)
    x = x.masked_fill(~mask[..., None], float("nan"))  # padding must never reach the output
    v, w = pool(x, mask)
    assert w.shape == (3, 7) and v.shape == (3, 16)
    assert torch.isfinite(v).all()
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    assert w[2, 0] == 1.0
    # padding does not change the result of a row
    v1, w1 = pool(x[1:2, :4], mask[1:2, :4])
    torch.testing.assert_close(v1[0], v[1])
    torch.testing.assert_close(w1[0], w[1, :4])


def test_attention_pool_rejects_a_bad_mask():
    pool = AttentionPool(8)
    with pytest.raises(AttnKitError, match="mask must be a bool tensor"):
        pool(torch.randn(2, 3, 8), torch.ones(2, 3))
    with pytest.raises(AttnKitError, match=r"\(2, 3\)"):
        pool(torch.randn(2, 3, 8), torch.ones(2, 4, dtype=torch.bool))


def test_han_weights_over_sentences_and_words():
    torch.manual_seed(0)
    han = HAN(ModelConfig("han", dim=12, hidden=8)).eval()
    x = torch.randn(2, 3, 5, 12)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[0, :, :4] = True
    mask[1, 0, :2] = True
    smask = torch.tensor([[True, True, True], [True, False, False]])
    logits, (ww, sw) = han({"states": x, "mask": mask, "sent_mask": smask})
    assert logits.shape == (2, 2) and ww.shape == (2, 3, 5) and sw.shape == (2, 3)
    torch.testing.assert_close(sw.sum(1), torch.ones(2))
    assert sw[1, 1:].abs().sum() == 0 and (ww[~mask] == 0).all()
    torch.testing.assert_close(ww[0].sum(-1), torch.ones(3))


@pytest.mark.parametrize("kind", ["gru", "gru-attn"])
def test_gru_padding_invariance(kind):
    torch.manual_seed(0)
    m = build_model(ModelConfig(kind, vocab=50, emb_dim=8, hidden=8)).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = ids != 0
    logits, w = m({"ids": ids, "mask": mask})
    alone, _ = m({"ids": ids[:1, :3], "mask": mask[:1, :3]})
    torch.testing.assert_close(logits[0], alone[0])
    assert (w is None) == (kind == "gru")


def test_unknown_model_kind():
    with pytest.raises(AttnKitError, match="not a torch model"):
        ModelConfig("minilm-lr")
