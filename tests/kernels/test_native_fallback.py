"""Where the native kernel cannot be built, attnkit still runs on its pure-PyTorch
implementations and ``explain_dispatch`` says why; importing attnkit never builds anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit import kernels, masks


@pytest.fixture
def no_build(monkeypatch):
    """A process where the extension was never loaded and building it fails."""
    def fail():
        raise RuntimeError("Error building extension 'attnkit_native': simulated compiler failure")

    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setattr(kernels, "_build", fail)


def test_failed_build_is_explained_and_auto_runs_pure_pytorch(no_build):
    q = torch.randn(1, 2, 1500, 16, requires_grad=True)  # a size no other test dispatches (memoised decisions)
    mask = masks.causal() & masks.window(100, 0)
    with pytest.raises(RuntimeError, match="simulated compiler failure"):
        kernels.native_module()
    report = attnkit.explain_dispatch(q, q, q, mask)
    assert "could not be built" in " ".join(report.reasons["native"])
    assert report.chosen not in (None, "native")
    out = attnkit.attention(q, q, q, mask)
    ref = attnkit.attention(q, q, q, mask, impl="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    out.sum().backward()
    assert q.grad.isfinite().all()


def test_build_failing_during_a_call_hands_the_call_on(no_build):
    q = torch.randn(1, 2, 37, 8)
    out = attnkit.attention(q, q, q, masks.causal(), impl="native")
    torch.testing.assert_close(out, attnkit.attention(q, q, q, masks.causal(), impl="reference"))
    assert "could not be built" in kernels.unavailable_reason()


def test_missing_compiler_is_reported_without_building(monkeypatch):
    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    why = kernels.unavailable_reason()
    assert why is not None and "no C++ compiler" in why
    q = torch.randn(1, 1, 8, 4)
    assert "no C++ compiler" in " ".join(attnkit.explain_dispatch(q, q, q, impl="native").reasons["native"])


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("ATTNKIT_NATIVE", "0")
    assert "ATTNKIT_NATIVE=0" in kernels.unavailable_reason()


def test_import_builds_nothing_and_prints_nothing():
    code = ("import attnkit, attnkit.kernels as k; import torch; q = torch.randn(1, 1, 4, 4); "
            "attnkit.explain_dispatch(q, q, q); assert 'module' not in k._STATE")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
