"""The comparison tables and the speed measurements run on tiny models and report what they measured."""

from __future__ import annotations

import torch

from attnkit.apps.translation.models import ModelConfig, build_model
from attnkit.apps.translation.report import decoding_throughput, training_throughput


def test_training_throughput_measures_both_transformers():
    cfg = ModelConfig(kind="transformer", vocab=50, d_model=16, layers=1, heads=2, ff=32, dropout=0.0)
    out = training_throughput(cfg, batch=4, src_len=5, tgt_len=6, steps=2, rounds=2, warmup=1)
    rates = out["tokens_per_second"]
    assert set(rates) == {"transformer", "torch-transformer"} and all(r > 0 for r in rates.values())
    assert out["ratio_attnkit_over_torch"] == rates["transformer"] / rates["torch-transformer"]
    assert out["parameters"]["transformer"] > 0 and len(out["rounds"]["transformer"]) == 2


def test_decoding_throughput_cached_and_recomputed():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="transformer", vocab=50, d_model=16, layers=1, heads=2, ff=32, dropout=0.0))
    out = decoding_throughput(model, batch=2, src_len=4, new_tokens=5, rounds=1)
    assert out["cached"] > 0 and out["recomputed"] > 0 and out["speedup"] == out["cached"] / out["recomputed"]
