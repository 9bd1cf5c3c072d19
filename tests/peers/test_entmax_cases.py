"""The ``entmax`` package's tests of sparsemax and 1.5-entmax (``entmax/test_root_finding.py``,
``test_topk.py``, ``test_mask.py`` and the values in its README), re-expressed against
``attnkit.weights.sparsemax`` / ``entmax15`` and ``attnkit.attention(..., weight=...)``.

Re-expressed here:

* the exact sort-based maps against a bisection solver of alpha-entmax written in this file
  (entmax's own oracle), on random rows and at input scales 1e-5, 0.5 and 1e4 (the partial-sort
  tests), along every dimension of a 3-D tensor (moved to the last one, where attnkit works);
* the README's worked example ``[-2, 0, 0.5]`` and closed forms for two scores;
* sums to one, non-negativity, sparsity (exact zeros; the sparsemax support lies inside the
  1.5-entmax support), and the relationship to softmax (all three become uniform as the scores
  shrink and one-hot as they grow);
* ``-inf`` scores behave as removed keys (``test_mask``), likewise attnkit's boolean mask;
* gradcheck in float64 of both maps and of attention with them;
* attention with ``weight="sparsemax"`` / ``"entmax15"`` for every exact implementation, and a
  user's own weight function (generic alpha-entmax by bisection, ``test_mask_alphas``' alphas);
* with the ``entmax`` package installed, direct comparison of values and gradients.

Documented difference: a row whose scores are all ``-inf`` (or all masked) gives zero weights
in attnkit; the ``entmax`` package raises an index error there. Not re-expressed: the losses,
``normmax`` and ``budget`` maps, gradients with respect to alpha (attnkit has no learned alpha).
"""

from __future__ import annotations

import math

import pytest
import torch
from peer_support import EXACT, randn, skip_unsupported

import attnkit
from attnkit import weights

MAPS = {"sparsemax": (weights.sparsemax, 2.0), "entmax15": (weights.entmax15, 1.5)}


def entmax_bisect(x: torch.Tensor, alpha: float, n_iter: int = 80) -> torch.Tensor:
    """alpha-entmax over the last dim by bisection on the threshold: p_i = [(alpha - 1) x_i -
    tau]_+ ^ (1 / (alpha - 1)) with tau such that the p_i sum to 1. ``-inf`` entries get 0; a row
    of only ``-inf`` gives zeros. (alpha = 2 is sparsemax, alpha = 1.5 is 1.5-entmax.)"""
    z = (alpha - 1) * x
    finite = torch.isfinite(z)
    z = torch.where(finite, z, torch.zeros_like(z))
    top = torch.where(finite, z, torch.full_like(z, -math.inf)).amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    lo, hi = top - 1.0, top  # p(lo) sums to >= 1, p(hi) to 0

    def p_of(tau):
        return torch.clamp(z - tau, min=0) ** (1 / (alpha - 1)) * finite

    for _ in range(n_iter):
        mid = (lo + hi) / 2
        over = p_of(mid).sum(-1, keepdim=True) >= 1
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    p = p_of((lo + hi) / 2)
    total = p.sum(-1, keepdim=True)
    return torch.where(total > 0, p / torch.where(total > 0, total, 1.0), 0.0)


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("seed", range(3))
def test_exact_maps_match_bisection(name, seed):
    fn, alpha = MAPS[name]
    x = 0.5 * torch.randn(4, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(fn(x), entmax_bisect(x, alpha), atol=1e-12, rtol=0)
    x32 = x.float()
    assert torch.sum((fn(x32).double() - entmax_bisect(x, alpha)) ** 2) < 1e-7  # the suite's float32 check


@pytest.mark.parametrize("coef", [1e-5, 0.5, 1e4])
@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("name", list(MAPS))
def test_any_dimension_and_scale(name, dim, coef):
    """Along every dim of a (3, 4, 5) tensor and at tiny, moderate and huge score scales."""
    fn, alpha = MAPS[name]
    x = coef * torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    got = fn(x.movedim(dim, -1)).movedim(-1, dim)
    want = entmax_bisect(x.movedim(dim, -1), alpha).movedim(-1, dim)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(got.sum(dim), torch.ones_like(got.sum(dim)), atol=1e-12, rtol=0)


def test_readme_example():
    """entmax's README: sparsemax([-2, 0, 0.5]) = [0, .25, .75], entmax15 = [0, .3260, .6740]."""
    x = torch.tensor([-2.0, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(weights.sparsemax(x), torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64))
    # 1.5-entmax on the support {0, 0.5}: tau solves (0 - tau)^2 + (0.25 - tau)^2 = 1 on x / 2
    tau = (0.25 - math.sqrt(2 - 0.25**2)) / 2
    want = torch.tensor([0.0, tau**2, (0.25 - tau) ** 2], dtype=torch.float64)
    torch.testing.assert_close(weights.entmax15(x), want)
    torch.testing.assert_close(weights.entmax15(x), torch.tensor([0.0, 0.3260, 0.6740], dtype=torch.float64),
                               atol=5e-5, rtol=0)


@pytest.mark.parametrize("t", [-3.0, -2.0, -0.7, 0.0, 0.4, 1.9, 2.5])
def test_two_score_closed_forms(t):
    """Two scores [t, 0]: softmax gives sigmoid(t); sparsemax clip((t + 1) / 2, 0, 1); 1.5-entmax
    ((t/2 + sqrt(2 - t^2/4)) / 2)^2 for |t| <= 2, else one-hot."""
    x = torch.tensor([t, 0.0], dtype=torch.float64)
    torch.testing.assert_close(weights.softmax(x)[0].item(), 1 / (1 + math.exp(-t)))
    torch.testing.assert_close(weights.sparsemax(x)[0].item(), min(max((t + 1) / 2, 0.0), 1.0))
    a = t / 2
    want = ((a + math.sqrt(2 - a * a)) / 2) ** 2 if abs(t) <= 2 else float(t > 0)
    torch.testing.assert_close(weights.entmax15(x)[0].item(), want)


@pytest.mark.parametrize("name", list(MAPS))
def test_simplex_and_sparsity(name):
    fn, _ = MAPS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64) * torch.rand(500, 1, generator=g,
                                                                          dtype=torch.float64) * 5
    p = fn(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(500, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (p == 0).any(-1).float().mean() > 0.5  # most rows have exact zeros
    top = x.argmax(-1, keepdim=True)
    assert (p.gather(-1, top) > 0).all()  # the largest score is always in the support
    order_kept = (x.unsqueeze(-1) >= x.unsqueeze(-2)) & (p.unsqueeze(-2) > 0)  # x_i >= x_j, j kept
    assert (p.unsqueeze(-1).expand_as(order_kept)[order_kept] > 0).all()  # a larger score is kept too


def test_sparsemax_support_lies_inside_entmax15_support():
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    assert ((weights.sparsemax(x) > 0) <= (weights.entmax15(x) > 0)).all()


@pytest.mark.parametrize("name", ["softmax", *MAPS])
def test_relationship_to_softmax_at_the_temperature_limits(name):
    """Like softmax, both maps are uniform for vanishing scores and one-hot on the largest score
    for huge ones."""
    fn = weights.resolve(name)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(fn(1e-9 * x), torch.full_like(x, 1 / 7), atol=1e-8, rtol=0)
    one_hot = torch.nn.functional.one_hot(x.argmax(-1), 7).to(x.dtype)
    torch.testing.assert_close(fn(1e9 * x), one_hot, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(MAPS))
def test_neg_inf_scores_and_mask_remove_keys(name, dtype):
    """test_mask: with columns 3: at -inf the result is the map of the first 3 columns, padded with
    zeros; attnkit's boolean mask does the same."""
    fn, _ = MAPS[name]
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(42), dtype=dtype)
    removed = x.clone()
    removed[:, 3:] = -math.inf
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[:, :3] = True
    want = torch.cat([fn(x[:, :3]), torch.zeros(2, 3, dtype=dtype)], dim=1)
    torch.testing.assert_close(fn(removed), want)
    torch.testing.assert_close(fn(x, keep), want)


@pytest.mark.parametrize("name", list(MAPS))
def test_rows_without_keys_are_zero_documented_difference(name):
    """A row of only -inf (or fully masked) gives zero weights and zero gradient in attnkit."""
    fn, _ = MAPS[name]
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[True] * 5, [False] * 5])
    p = fn(x, keep)
    assert (p[1] == 0).all() and torch.isfinite(p).all()
    (p * torch.randn(2, 5, dtype=torch.float64)).sum().backward()
    assert (x.grad[1] == 0).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("name", list(MAPS))
def test_gradcheck(name, dim):
    fn, _ = MAPS[name]
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(dim), dtype=torch.float64,
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x.movedim(dim, -1)).movedim(-1, dim), (x,))


def _qkv(seed=0, t=6, s=9):
    g = torch.Generator().manual_seed(seed)
    return randn(2, 3, t, 8, gen=g, scale=1.5), randn(2, 3, s, 8, gen=g, scale=1.5), randn(2, 3, s, 8, gen=g)


def _key_mask(t=6, s=9, seed=1):
    keep = torch.rand(2, 1, t, s, generator=torch.Generator().manual_seed(seed)) < 0.7
    keep[0, 0, 2] = False  # one query with no key: zero weights, zero output
    keep[1, 0, :, 0] = True
    return keep


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("impl", EXACT)
def test_attention_with_sparse_weights(impl, name):
    q, k, v = _qkv()
    keep = _key_mask()
    skip_unsupported(impl, q, k, v, keep, weight=name, return_weights=True)
    out, w = attnkit.attention(q, k, v, keep, weight=name, impl=impl, return_weights=True)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    want_w = entmax_bisect(s.masked_fill(~keep, -math.inf), MAPS[name][1])
    torch.testing.assert_close(w, want_w, atol=1e-10, rtol=0)
    torch.testing.assert_close(out, want_w @ v, atol=1e-10, rtol=0)
    alive = keep.any(-1).expand(2, 3, 6)
    torch.testing.assert_close(w.sum(-1)[alive], torch.ones(int(alive.sum()), dtype=w.dtype))
    assert (w.sum(-1)[~alive] == 0).all() and (out[~alive] == 0).all()
    assert (w[~keep.expand_as(w)] == 0).all() and (w[keep.expand_as(w)] == 0).any()  # sparse


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("impl", EXACT)
def test_attention_gradcheck(impl, name):
    g = torch.Generator().manual_seed(3)
    q, k, v = (randn(1, 2, n, 4, gen=g, grad=True) for n in (3, 5, 5))
    keep = torch.rand(3, 5, generator=g) < 0.7
    keep[:, 1] = True
    skip_unsupported(impl, q, k, v, keep, weight=name)
    assert torch.autograd.gradcheck(lambda q, k, v: attnkit.attention(q, k, v, keep, weight=name, impl=impl),
                                    (q, k, v))


def _alpha_entmax_weight(alpha):
    """A user's weight function: alpha-entmax by bisection over the allowed keys."""
    def alpha_entmax(scores, mask):
        return entmax_bisect(scores if mask is None else scores.masked_fill(~mask, -math.inf), alpha)
    return alpha_entmax


@pytest.mark.parametrize("alpha", [1.25, 1.5, 1.75, 2.0])
@pytest.mark.parametrize("impl", EXACT)
def test_user_weight_function_alpha_entmax(impl, alpha):
    """test_mask_alphas' alphas as a user-supplied weight; alpha 1.5 and 2 agree with the
    built-in exact maps."""
    q, k, v = _qkv(seed=4)
    keep = _key_mask(seed=5)
    fn = _alpha_entmax_weight(alpha)
    skip_unsupported(impl, q, k, v, keep, weight=fn)
    out = attnkit.attention(q, k, v, keep, weight=fn, impl=impl)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    torch.testing.assert_close(out, fn(s, keep) @ v, atol=1e-12, rtol=0)
    builtin = {1.5: "entmax15", 2.0: "sparsemax"}.get(alpha)
    if builtin is not None:
        torch.testing.assert_close(out, attnkit.attention(q, k, v, keep, weight=builtin, impl="reference"),
                                   atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", [*EXACT, "auto"])
def test_user_weight_function_named_softmax_runs_as_given(impl):
    """entmax's relationship to softmax, as a user would write it: a temperature-2 softmax named
    ``softmax`` must run as written, whatever the built-in of the same name does."""
    def softmax(scores, mask):
        return weights.softmax(scores / 2, mask)

    q, k, v = _qkv(seed=6)
    keep = _key_mask(seed=7)
    if impl != "auto":
        skip_unsupported(impl, q, k, v, keep, weight=softmax)
    out = attnkit.attention(q, k, v, keep, weight=softmax, impl=impl)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    torch.testing.assert_close(out, softmax(s, keep) @ v, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(MAPS))
def test_against_the_entmax_package(name):
    entmax = pytest.importorskip("entmax")
    theirs = {"sparsemax": entmax.sparsemax, "entmax15": entmax.entmax15}[name]
    fn, _ = MAPS[name]
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(5, 4, 9, generator=g, dtype=torch.float64) * 2)
    x[0, 0, 4:] = -math.inf  # removed keys; every row along every dim keeps a finite score (entmax needs one)
    x[1, 2, :3] = -math.inf
    for dim in (0, 1, 2):
        a = x.detach().clone().requires_grad_()
        b = x.detach().clone().requires_grad_()
        mine = fn(a.movedim(dim, -1)).movedim(-1, dim)
        ref = theirs(b, dim=dim)
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)
        cot = torch.randn(x.shape, generator=g, dtype=torch.float64)
        (mine * cot).sum().backward()
        (ref * cot).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=0)
    q, k, v = _qkv(seed=9)
    keep = torch.rand(2, 1, 6, 9, generator=g) < 0.7
    keep[..., 0] = True
    _, w = attnkit.attention(q, k, v, keep, weight=name, impl="reference", return_weights=True)
    s = ((q @ k.transpose(-2, -1)) / math.sqrt(8)).masked_fill(~keep, -math.inf)
    torch.testing.assert_close(w, theirs(s, dim=-1), atol=1e-12, rtol=0)
