"""attnkit inside transformers: ``attn_implementation="attnkit"`` against transformers' eager
attention on the same weights, on a padded batch."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks

SENTS = ["The cat sat on the mat.", "A man is playing a guitar on stage while the crowd sings along.", "Hi!"]


def _mean_pool(h, am):
    m = am.unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def test_parity_padded_batch(hf_minilm):
    eager, ours, tok = hf_minilm
    batch = tok(SENTS)
    real = batch["attention_mask"].bool()
    assert not real.all()
    seen = set()
    with torch.no_grad(), attnkit.observe(lambda call, name, out, w: seen.add((name, type(call.mask).__name__))):
        a = ours(**batch, output_hidden_states=True, output_attentions=True)
    b = eager(**batch, output_hidden_states=True, output_attentions=True)
    assert seen and all(cls == "KeyMask" for _, cls in seen)  # padding reached attnkit as a key mask
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert (x - y)[real].abs().max().item() <= 1e-5
        assert (x - y).abs().max().item() <= 2e-4  # padded positions: float32 conditioning, see docs
    assert len(a.attentions) == 6
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert x.shape == y.shape
        assert (x - y).transpose(1, 2)[real].abs().max().item() <= 1e-5
    # without output_attentions the fused path runs (no weights needed)
    with torch.no_grad():
        c = ours(**batch, output_hidden_states=True)
    for x, y in zip(c.hidden_states, b.hidden_states, strict=True):
        assert (x - y)[real].abs().max().item() <= 1e-5
    for h in (a.last_hidden_state, c.last_hidden_state):
        cos = torch.nn.functional.cosine_similarity(_mean_pool(h, batch["attention_mask"]),
                                                    _mean_pool(b.last_hidden_state.detach(), batch["attention_mask"]))
        assert (1 - cos).abs().max().item() <= 1e-6


def test_without_padding_no_mask_and_same_as_attnkit_model(hf_minilm):
    from attnkit.models import load_minilm

    _, ours, tok = hf_minilm
    model, _ = load_minilm()
    batch = tok(["A red car", "A blue car"])
    assert batch["attention_mask"].bool().all()
    with torch.no_grad():
        h_hf = ours(**batch).last_hidden_state
        h_ak = model(**batch).last_hidden_state
    assert (h_hf - h_ak).abs().max().item() <= 1e-5


def test_choose_impl(hf_minilm):
    from attnkit.integrations import hf

    _, ours, tok = hf_minilm
    batch = tok(SENTS[:2])
    names: list[str] = []
    with torch.no_grad(), attnkit.observe(lambda call, name, out, w: names.append(name)):
        ours(**batch, attnkit_impl="reference")
        assert set(names) == {"reference"}
        names.clear()
        with hf.use_impl("reference"):
            ours(**batch)
        assert set(names) == {"reference"}
        names.clear()
        ours(**batch)
        assert len(set(names)) == 1 and attnkit.get_impl(names[0]).exact  # auto: an exact impl
    with pytest.raises(attnkit.UnknownNameError, match="unknown impl 'nope'"):
        with hf.use_impl("nope"):
            pass


def test_register_named_configuration_with_pattern(hf_minilm, hf_minilm_loader):
    from attnkit.integrations import hf

    eager, _, tok = hf_minilm
    name = hf.register("attnkit_window_test", impl="reference", mask=masks.window(1, 1))
    windowed = hf_minilm_loader(name)
    batch = tok(SENTS[:1])
    names: list[str] = []
    with torch.no_grad(), attnkit.observe(lambda call, n, out, w: names.append(n)):
        a = windowed(**batch, output_attentions=True)
    assert set(names) == {"reference"}
    w = a.attentions[0][0, 0]  # (T, T): only the band |i - j| <= 1 is attended
    band = masks.window(1, 1).dense(w.shape[0], w.shape[1])
    assert w[~band].abs().max().item() == 0.0
    assert (a.last_hidden_state - eager(**batch).last_hidden_state).abs().max().item() > 1e-2
    with pytest.raises(attnkit.UnknownNameError):
        hf.register("attnkit_bad", impl="no-such-impl")
    with pytest.raises(attnkit.AttnKitError, match="identifier"):
        hf.register("bad name")


def test_to_attnkit_mask():
    from attnkit.integrations.hf import to_attnkit_mask

    keep = torch.tensor([[True, True, False], [True, True, True]])
    m4 = keep[:, None, None, :].expand(2, 1, 3, 3)
    mask, bias = to_attnkit_mask(m4)
    assert bias is None and isinstance(mask, masks.KeyMask)
    assert torch.equal(mask.dense4(3, 3)[:, 0], m4[:, 0])
    mask, _ = to_attnkit_mask(torch.ones(2, 1, 3, 3, dtype=torch.bool))
    assert mask is None  # nothing masked
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))[None, None]
    mask, _ = to_attnkit_mask(causal)
    assert torch.equal(mask.dense4(3, 3)[0, 0], causal[0, 0])
    add = torch.zeros(1, 1, 3, 3)
    assert to_attnkit_mask(add)[1] is add
    with pytest.raises(attnkit.DTypeError, match="attention_mask must be a tensor"):
        to_attnkit_mask([[1, 0]])
