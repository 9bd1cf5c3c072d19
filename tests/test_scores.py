"""Score functions and modifiers: values against loops, gradcheck, ALiBi slopes from the paper."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit import scores
from attnkit.errors import AttnKitError, DTypeError, ShapeError, UnknownNameError

G = torch.Generator().manual_seed(0)
Q = torch.randn(2, 3, 4, 5, generator=G, dtype=torch.float64)
K = torch.randn(2, 3, 6, 5, generator=G, dtype=torch.float64)


def loop_scores(fn) -> torch.Tensor:
    """Score every (b, h, i, j) with a Python loop over the pair function ``fn(q_i, k_j, h)``."""
    b, h, t, _ = Q.shape
    s = K.shape[2]
    out = torch.empty(b, h, t, s, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                for j in range(s):
                    out[bi, hi, i, j] = fn(Q[bi, hi, i], K[bi, hi, j], hi)
    return out


def test_dot_and_scaled_dot():
    torch.testing.assert_close(scores.resolve("dot")(Q, K, 1.0), loop_scores(lambda q, k, h: q @ k))
    sd = scores.resolve("scaled_dot")
    assert sd.default_scale(5) == pytest.approx(1 / math.sqrt(5))
    torch.testing.assert_close(sd(Q, K, sd.default_scale(5)), loop_scores(lambda q, k, h: q @ k / math.sqrt(5)))


def test_cosine():
    c = scores.cosine(temperature=0.5)
    want = loop_scores(lambda q, k, h: (q @ k) / (q.norm() * k.norm()) / 0.5)
    torch.testing.assert_close(c(Q, K, 1.0), want)
    assert c(Q, K, 1.0).abs().max() <= 2.0 + 1e-12


def test_general_shared_and_per_head():
    w = torch.randn(5, 5, dtype=torch.float64)
    torch.testing.assert_close(scores.general(w)(Q, K, 1.0), loop_scores(lambda q, k, h: q @ w @ k))
    wh = torch.randn(3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(scores.general(wh)(Q, K, 1.0), loop_scores(lambda q, k, h: q @ wh[h] @ k))


def test_additive():
    wq, wk, v = (torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64),
                 torch.randn(7, dtype=torch.float64))
    want = loop_scores(lambda q, k, h: v @ torch.tanh(wq @ q + wk @ k))
    torch.testing.assert_close(scores.additive(wq, wk, v)(Q, K, 1.0), want)


BUILDERS = {
    "dot": (scores.dot, []),
    "scaled_dot": (scores.scaled_dot, []),
    "cosine": (lambda: scores.cosine(0.3), []),
    "general": (scores.general, [(5, 5)]),
    "additive": (scores.additive, [(4, 5), (4, 5), (4,)]),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_score_gradcheck(name):
    build, param_shapes = BUILDERS[name]
    q = Q[:1, :1].clone().requires_grad_()
    k = K[:1, :1].clone().requires_grad_()
    params = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in param_shapes]
    assert torch.autograd.gradcheck(lambda q, k, *ps: build(*ps)(q, k, 0.7), (q, k, *params))


def _indices(b, h, t, s):
    return (torch.arange(b).view(-1, 1, 1, 1), torch.arange(h).view(1, -1, 1, 1),
            torch.arange(t).view(1, 1, -1, 1), torch.arange(s).view(1, 1, 1, -1))


def test_alibi_slopes_match_paper():
    # Press et al. 2022: for 8 heads the slopes are 1/2, 1/4, ..., 1/256
    torch.testing.assert_close(scores.alibi_slopes(8), torch.tensor([2.0 ** -(k + 1) for k in range(8)]))
    # 16 heads: 2^(-8/16 * k) = 2^(-k/2), k = 1..16
    torch.testing.assert_close(scores.alibi_slopes(16), torch.tensor([2.0 ** (-0.5 * (k + 1)) for k in range(16)]))
    # 12 heads (not a power of two): the 8 slopes, then every other slope of the 16-head sequence
    want = [2.0 ** -(k + 1) for k in range(8)] + [2.0 ** (-0.5 * (k + 1)) for k in range(16)][0::2][:4]
    torch.testing.assert_close(scores.alibi_slopes(12), torch.tensor(want))


def test_alibi_mod_values_and_alignment():
    s = torch.zeros(1, 2, 3, 5, dtype=torch.float64)
    out = scores.alibi(torch.tensor([0.5, 0.25]))(s, *_indices(1, 2, 3, 5), 3, 5)
    # query i sits at key position i + 2 (bottom-right aligned); bias -slope * |i + 2 - j|
    assert out[0, 0, 2].tolist() == [-2.0, -1.5, -1.0, -0.5, 0.0]
    assert out[0, 1, 0].tolist() == [-0.5, -0.25, 0.0, -0.25, -0.5]


def test_softcap_and_bias():
    s = torch.tensor([[-100.0, 0.0, 3.0, 100.0]], dtype=torch.float64).view(1, 1, 1, 4)
    capped = scores.softcap(5.0)(s, *_indices(1, 1, 1, 4), 1, 4)
    assert capped.abs().max() <= 5.0 and capped[0, 0, 0, 1] == 0
    torch.testing.assert_close(capped, 5 * torch.tanh(s / 5))
    b = torch.randn(2, 1, 4, dtype=torch.float64)
    out = scores.bias(b)(torch.zeros(3, 2, 1, 4, dtype=torch.float64), *_indices(3, 2, 1, 4), 1, 4)
    torch.testing.assert_close(out, b.expand(3, 2, 1, 4))


def test_as_bias_only_for_additive():
    bias = scores.alibi(4).as_bias(1, 4, 3, 3, dtype=torch.float32, device=torch.device("cpu"))
    assert bias.shape == (1, 4, 3, 3) and bias[0, 0, 0, 0] == 0
    with pytest.raises(AttnKitError, match="not additive"):
        scores.softcap(1.0).as_bias(1, 1, 2, 2, dtype=torch.float32, device=torch.device("cpu"))


def test_score_errors():
    with pytest.raises(UnknownNameError, match="valid score names: additive, cosine, dot, general, scaled_dot"):
        scores.resolve("dotty")
    with pytest.raises(AttnKitError, match=r"scores.general\(weight\)"):
        scores.resolve("general")
    with pytest.raises(ShapeError, match=r"\(D, D\) or \(H, D, D\)"):
        scores.general(torch.randn(5))
    with pytest.raises(ShapeError, match="additive score needs"):
        scores.additive(torch.randn(3, 5), torch.randn(4, 5), torch.randn(3))
    with pytest.raises(DTypeError, match="floating-point"):
        scores.bias(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(AttnKitError, match="cosine temperature must be a finite number > 0"):
        scores.cosine(0.0)
    with pytest.raises(AttnKitError, match="softcap cap must be a finite number > 0"):
        scores.softcap(-1)
