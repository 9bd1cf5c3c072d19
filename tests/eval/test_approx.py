"""attnkit.eval.approx and ``attnkit compare``: the measured numbers mean what they say."""

from __future__ import annotations

import json

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.cli import main
from attnkit.errors import AttnKitError, UnknownNameError
from attnkit.eval.approx import Candidate, compare, compare_inputs, mass_recall


def test_exact_methods_have_zero_error_and_full_recall():
    q, k, v = compare_inputs(t=64, heads=2, head_dim=16)
    res = compare(q, k, v, ["sdpa", "reference"], masks.causal(), repeats=1)
    for row in res.rows:
        assert row.rel_error < 1e-5 and row.recall == 1.0 and row.ms > 0
    assert "| sdpa |" in res.table() and res.to_dict()["rows"][1]["impl"] == "reference"


def test_lsh_numbers_match_an_independent_computation():
    q, k, v = compare_inputs(t=96, heads=2, head_dim=16, dist="clustered", seed=1)
    opts = {"bucket_size": 16, "n_hashes": 2}
    row = compare(q, k, v, [("lsh", opts)], repeats=1).rows[0]
    out, w = attnkit.attention(q, k, v, impl="lsh", options=opts, return_weights=True)
    exact, w_exact = attnkit.attention(q, k, v, impl="reference", return_weights=True)
    assert row.rel_error == pytest.approx(float((out - exact).norm() / exact.norm()), rel=1e-4)
    per_query = (w_exact * (w > 0)).sum(-1).flatten()
    assert row.recall == pytest.approx(float(per_query.mean()), rel=1e-4)
    assert row.recall_p10 == pytest.approx(float(per_query.quantile(0.1)), rel=1e-4)
    assert 0 < row.recall < 1


def test_one_bucket_lsh_has_full_recall_and_clustered_beats_gaussian():
    q, k, v = compare_inputs(t=64, heads=1, head_dim=16)
    row = compare(q, k, v, [("lsh", {"n_buckets": 1, "bucket_size": 128})], repeats=1).rows[0]
    assert row.recall == pytest.approx(1.0) and row.rel_error < 1e-5
    rec = {}
    for dist in ("gaussian", "clustered"):
        q, k, v = compare_inputs(t=256, heads=2, head_dim=32, dist=dist)
        rec[dist] = compare(q, k, v, [("lsh", {"bucket_size": 32})], repeats=1).rows[0].recall
    assert rec["clustered"] > rec["gaussian"] + 0.1


def test_recall_skips_dead_rows():
    q, k, v = compare_inputs(t=16, heads=1, head_dim=8)
    m = masks.padding([0, 16])
    q, k, v = (torch.cat([x, x]) for x in (q, k, v))
    mean, p10 = mass_recall(q, k, m, 0.35, lambda i0, n: torch.ones(2, 1, n, 16, dtype=torch.bool))
    assert mean == pytest.approx(1.0) and p10 == pytest.approx(1.0)


def test_memory_probe_reports_numbers():
    q, k, v = compare_inputs(t=32, heads=1, head_dim=8)
    row = compare(q, k, v, [Candidate("ref", "reference")], masks.causal(), repeats=1, memory=True).rows[0]
    assert row.peak_mib is not None and row.peak_mib >= 0


def test_bad_candidates():
    q, k, v = compare_inputs(t=8, heads=1, head_dim=4)
    with pytest.raises(UnknownNameError, match="impl"):
        compare(q, k, v, ["nope"])
    with pytest.raises(AttnKitError, match="candidate"):
        compare(q, k, v, [1])
    with pytest.raises(AttnKitError, match="dist"):
        compare_inputs(dist="uniform")


def test_cli_synthetic(tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = main(["compare", "--length", "64", "--heads", "1", "--dim", "16", "--dist", "clustered", "--causal",
               "--impls", "sdpa", "lsh", "linear", "favor", "--bucket-size", "16", "--repeats", "1",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "| lsh (bucket 16, 4 hashes) |" in text and "FAVOR+" in text
    data = json.loads(out.read_text())
    assert [r["impl"] for r in data["rows"]] == ["sdpa", "lsh", "linear", "linear"]
    assert data["rows"][0]["rel_error"] < 1e-5


def test_cli_model_without_module(monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name == "attnkit.eval.model_approx":
            raise ImportError("No module named 'attnkit.eval.model_approx'")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", fake)
    rc = main(["compare", "--model", "minilm"])
    assert rc == 2 and "attnkit.eval.model_approx" in capsys.readouterr().err
