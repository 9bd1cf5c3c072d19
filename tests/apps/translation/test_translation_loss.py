"""The training loss's label smoothing, and the per-model recipes of a preset."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.apps.translation.models import ModelConfig, build_model
from attnkit.apps.translation.task import BIBLE_PRESETS, PRESETS, Preset, make_loss
from attnkit.apps.translation.tokenizer import BOS, EOS, PAD
from attnkit.errors import AttnKitError

V = 30


def _batch():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, V, (3, 6), generator=g)
    tgt = torch.randint(4, V, (3, 7), generator=g)
    src[:, -1] = EOS
    tgt[:, 0] = BOS
    tgt[0, 4:] = PAD  # a shorter target: padding is not scored
    return src, tgt


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="transformer", vocab=V, d_model=16, layers=1, heads=2, ff=32,
                                   dropout=0.0)).eval()


def test_label_smoothing_matches_its_definition():
    model, (src, tgt) = _model(), _batch()
    eps = 0.1
    plain, n = make_loss(0.0)(model, (src, tgt))
    smooth, n2 = make_loss(eps)(model, (src, tgt))
    gold = tgt[:, 1:]
    keep = gold != PAD
    assert n == n2 == int(keep.sum()) == 3 * 6 - 3
    logp = torch.log_softmax(model(src, src != PAD, tgt[:, :-1]), -1)[keep]  # (N, V)
    nll = -logp.gather(1, gold[keep][:, None]).mean()
    uniform = -logp.mean()  # cross-entropy against the uniform distribution
    assert torch.allclose(plain, nll, atol=1e-5)
    assert torch.allclose(smooth, (1 - eps) * nll + eps * uniform, atol=1e-5)


class _Confident(torch.nn.Module):
    """Logits (B, T, V) that put almost all probability on the given target tokens."""

    def __init__(self, gold):
        super().__init__()
        self.gold = gold

    def forward(self, src, src_mask, tgt_in):
        return 20.0 * torch.nn.functional.one_hot(self.gold.clamp(min=0), V).float()


def test_label_smoothing_penalises_confidence():
    src, tgt = _batch()
    model = _Confident(tgt[:, 1:])
    plain, _ = make_loss(0.0)(model, (src, tgt))
    smooth, _ = make_loss(0.1)(model, (src, tgt))
    assert plain.item() < 1e-6  # right and sure: no plain loss
    # smoothed: 0.1 of the mass is wanted on every token, and costs about 0.1 * 20 * (V - 1) / V
    assert math.isclose(smooth.item(), 0.1 * 20 * (V - 1) / V, rel_tol=1e-3)


def test_label_smoothing_gradients_flow():
    model, batch = _model(), _batch()
    loss, _ = make_loss(0.2)(model, batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_label_smoothing_out_of_range_is_refused(bad):
    with pytest.raises(AttnKitError, match="label_smoothing"):
        make_loss(bad)
    with pytest.raises(AttnKitError, match="label_smoothing"):
        Preset(10, 5, 5, 100, 4, {}, {}, PRESETS["quick"].train, label_smoothing=bad)


def test_recipes_apply_per_model_family():
    base = PRESETS["quick"]
    p = Preset(10, 5, 5, 100, 4, {}, {}, base.train,
               recipes={"rnn": {"lr": 5e-3, "batch_size": 8}, "transformer": {"label_smoothing": 0.1, "vocab": 50}})
    rnn, tr = p.for_model("rnn-luong"), p.for_model("transformer")
    assert (rnn.train.lr, rnn.batch_size, rnn.label_smoothing, rnn.vocab) == (5e-3, 8, 0.0, 100)
    assert (tr.train.lr, tr.batch_size, tr.label_smoothing, tr.vocab) == (base.train.lr, 4, 0.1, 50)
    with pytest.raises(AttnKitError, match="recipes"):
        Preset(10, 5, 5, 100, 4, {}, {}, base.train, recipes={"cnn": {}})
    with pytest.raises(AttnKitError, match="lr_peak"):
        Preset(10, 5, 5, 100, 4, {}, {}, base.train, recipes={"rnn": {"lr_peak": 1.0}})
    with pytest.raises(AttnKitError, match="label_smoothing"):
        p2 = Preset(10, 5, 5, 100, 4, {}, {}, base.train, recipes={"rnn": {"label_smoothing": 1.0}})
        p2.for_model("rnn")


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_every_preset_resolves(kind):
    for presets in (PRESETS, BIBLE_PRESETS):
        for p in presets.values():
            q = p.for_model(kind)
            assert q.recipes == {} and 0.0 <= q.label_smoothing < 1.0
