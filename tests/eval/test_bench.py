"""The benchmark harness (its bookkeeping, not any timing)."""

from __future__ import annotations

import json

import torch

import attnkit
from attnkit.eval.bench import Results, attention_flops, peak_memory, time_fn


def test_time_fn_counts_runs():
    calls = []
    t = time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(t.runs) == 3 and t.min <= t.median


def test_attention_flops():
    assert attention_flops(1, 1, 4, 8, 16) == 2 * 4 * 8 * 32
    assert attention_flops(2, 3, 4, 8, 16, 8, density=0.5, backward=True) == 2 * 2 * 3 * 4 * 8 * 24 * 0.5 * 3.5


def test_results_table_and_json(tmp_path):
    res = Results("demo")
    res.add({"T": 8}, "sdpa", 0.002)
    res.add({"T": 8}, "slow", 0.006, note="x")
    res.add({"T": 16}, "sdpa", 0.004)
    res.add({"T": 16}, "slow", None)
    table = res.table(["T"], baseline="sdpa")
    assert "| T | sdpa ms | slow ms | slow/sdpa |" in table
    assert "| 8 | 2.00 | 6.00 | 3.00x |" in table
    assert "| 16 | 4.00 | - | - |" in table
    data = json.loads(res.save(tmp_path / "r.json").read_text())
    assert data["environment"]["torch"] == torch.__version__ and len(data["rows"]) == 4


def setup_alloc(mib: int):
    """A peak_memory target: allocate and touch `mib` MiB."""
    return lambda: torch.ones(mib * 1024 * 1024 // 4).sum()


def setup_spike_then_alloc(spike_mib: int, mib: int):
    """A target whose set-up peaks higher (and frees it) than the run it returns."""
    torch.ones(spike_mib * 1024 * 1024 // 4).sum()
    return setup_alloc(mib)


def test_peak_memory_is_not_hidden_by_an_earlier_peak():
    """The run's peak is measured from a reset high-water mark, not from the process's lifetime
    maximum (which an import or a set-up spike would set above the run's own peak)."""
    import sys
    from pathlib import Path

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("the reset high-water mark is Linux-only")
    res = peak_memory("test_bench:setup_spike_then_alloc", {"spike_mib": 400, "mib": 100},
                      extra_path=[Path(__file__).parent])
    assert res is not None and 80 < res["peak_extra_mib"] < 300


def test_peak_memory_sees_an_allocation():
    from pathlib import Path

    here = [Path(__file__).parent]
    small = peak_memory("test_bench:setup_alloc", {"mib": 1}, extra_path=here)
    big = peak_memory("test_bench:setup_alloc", {"mib": 200}, extra_path=here)
    assert small is not None and big is not None
    assert big["peak_extra_mib"] > 150 > small["peak_extra_mib"]


def test_reference_options():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g).bfloat16() for _ in range(3))
    exact = attnkit.attention(q.double(), k.double(), v.double(), impl="reference")
    up = attnkit.attention(q, k, v, impl="reference", options={"upcast": True})
    low = attnkit.attention(q, k, v, impl="reference")
    assert up.dtype == torch.bfloat16
    assert (up.double() - exact).abs().max() <= (low.double() - exact).abs().max()
    ro = attnkit.attention(q.double(), k.double(), v.double(), impl="reference", options={"reorder_ops": True})
    torch.testing.assert_close(ro, exact)


def test_peak_memory_reports_failure():
    import pytest

    with pytest.warns(UserWarning, match="ModuleNotFoundError"):
        assert peak_memory("no_such_module_xyz:f", {}) is None
