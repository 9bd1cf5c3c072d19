"""Assertions shared by the quick-run tests."""

from __future__ import annotations


def assert_beats_baselines(results: dict, min_exact: float) -> None:
    """Held-out exact match and chrF above both trivial baselines, and at least ``min_exact``."""
    test, base = results["test"], results["baselines"]
    assert test["n"] == 300
    for name, b in base.items():
        assert test["chrf"] > b["chrf"] + 5, (name, test, b)
        assert test["exact"] > b["exact"], (name, test, b)
    assert test["exact"] >= min_exact, test
