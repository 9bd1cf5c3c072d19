"""Weight functions: exact values against independent solvers, gradients, masked/fully-masked rows."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attnkit import weights
from attnkit.errors import UnknownNameError

NORMALIZED = ["softmax", "sparsemax", "entmax15"]
ALL = [*NORMALIZED, "sigmoid"]


def _bisect_tau(z: torch.Tensor, p_of) -> torch.Tensor:
    """Find tau with sum(p_of(z - tau)) = 1 by bisection (an independent oracle)."""
    lo, hi = z.max() - 10.0, z.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if p_of(z - mid).sum() > 1:
            lo = mid
        else:
            hi = mid
    return p_of(z - (lo + hi) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_sparsemax_and_entmax_match_bisection(seed):
    z = torch.randn(12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    sp = _bisect_tau(z, lambda x: x.clamp(min=0))
    ent = _bisect_tau(z / 2, lambda x: x.clamp(min=0) ** 2)
    torch.testing.assert_close(weights.sparsemax(z), sp, atol=1e-9, rtol=0)
    torch.testing.assert_close(weights.entmax15(z), ent, atol=1e-9, rtol=0)


def test_softmax_matches_torch_where_rows_are_alive():
    s = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    mask = torch.rand(2, 3, 4, 6) < 0.6
    mask[..., 0] = True
    want = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
    torch.testing.assert_close(weights.softmax(s, mask), want, atol=1e-14, rtol=0)


def test_sigmoid_formula():
    s = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(weights.sigmoid(s), torch.sigmoid(s - math.log(5)))


@pytest.mark.parametrize("name", ALL)
def test_fully_masked_rows_are_zero_with_zero_grad(name):
    fn = weights.resolve(name)
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    mask[2, :3] = False
    w = fn(s, mask)
    assert torch.isfinite(w).all() and (w[1] == 0).all() and (w[2, :3] == 0).all()
    (w * torch.randn(3, 5, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert (s.grad[1] == 0).all() and (s.grad[2, :3] == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_neg_inf_scores_count_as_masked(name):
    s = torch.tensor([[0.5, -math.inf, 1.0], [-math.inf, -math.inf, -math.inf]], dtype=torch.float64)
    w = weights.resolve(name)(s, None)
    assert torch.isfinite(w).all() and w[0, 1] == 0 and (w[1] == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_gradcheck(name):
    fn = weights.resolve(name)
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    mask = torch.rand(2, 3, 7, generator=g) < 0.7
    mask[0, 0] = False  # one dead row
    assert torch.autograd.gradcheck(lambda x: fn(x, mask), (s,), eps=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(z=arrays("float64", st.integers(1, 12), elements=st.floats(-20, 20)),
       keep=st.lists(st.booleans(), min_size=12, max_size=12),
       name=st.sampled_from(NORMALIZED))
def test_normalized_weights_property(z, keep, name):
    """Weights are >= 0, exactly 0 on masked keys, and sum to 1 over allowed keys (0 if none)."""
    s = torch.from_numpy(z)
    mask = torch.tensor(keep[: len(z)])
    w = weights.resolve(name)(s, mask)
    assert (w >= 0).all()
    assert (w[~mask] == 0).all()
    total = w.sum().item()
    assert math.isclose(total, 1.0 if mask.any() else 0.0, abs_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(z=arrays("float64", st.integers(3, 12), elements=st.floats(-20, 20)))
def test_sparse_weights_are_sparse_when_scores_spread(z):
    """sparsemax gives exactly 0 to keys more than 1 below the max (entmax15: 2 below)."""
    s = torch.from_numpy(z)
    top = s.max()
    assert (weights.sparsemax(s)[s < top - 1] == 0).all()
    assert (weights.entmax15(s)[s < top - 2] == 0).all()


def test_sparse_outputs_have_zeros_on_typical_scores():
    s = torch.randn(100, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    assert (weights.sparsemax(s) == 0).float().mean() > 0.5
    assert (weights.entmax15(s) == 0).float().mean() > 0.3
    assert (weights.softmax(s) == 0).float().mean() == 0


def test_resolve():
    assert weights.resolve("softmax").is_builtin("softmax")
    with pytest.raises(UnknownNameError, match="valid weight names: entmax15, sigmoid, softmax, sparsemax"):
        weights.resolve("softermax")
    custom = weights.resolve(lambda s, m: torch.ones_like(s))
    assert custom.name == "<lambda>" and custom.kind == "custom" and not custom.builtin
