"""Positions: RoPE relative-position property, scaling options, sinusoidal table, ALiBi slopes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import scores
from attnkit.errors import AttnKitError, ShapeError
from attnkit.nn import RotaryEmbedding, SinusoidalPositionalEncoding, alibi_mod, sinusoidal_encoding


def _rot(rope, x, pos):
    return rope(x.view(1, 1, 1, -1), torch.tensor([pos]))[0, 0, 0]


@settings(max_examples=40, deadline=None)
@given(i=st.integers(0, 500), j=st.integers(0, 500), shift=st.integers(-200, 800), seed=st.integers(0, 1000))
def test_rope_scores_depend_only_on_relative_position(i, j, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    rope = RotaryEmbedding(16).double()
    a = _rot(rope, q, i) @ _rot(rope, k, j)
    i2, j2 = max(i + shift, 0), max(j + shift, 0)
    b = _rot(rope, q, i2) @ _rot(rope, k, j2)
    if i2 - j2 == i - j:
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_rope_relative_over_a_full_score_matrix():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, base=100.0)
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)
    pos = torch.arange(12)
    s = (rope(q, pos) @ rope(k, pos).transpose(-1, -2))[0, 0]  # (12, 12), same q and k at every position
    for d in range(-11, 12):  # constant along every diagonal i - j = d
        diag = torch.diagonal(s, offset=-d)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.diagonal(s, 0)[:1], torch.diagonal(s, -3)[:1])


def test_rope_preserves_norm_and_is_identity_at_zero():
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 5, 16)
    pos = torch.arange(5)
    y = rope(x, pos)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(rope(x, pos.expand(2, 5)), y)  # (B, T) positions


def test_rope_frequencies_and_scaling():
    plain = RotaryEmbedding(8, base=10000.0)
    torch.testing.assert_close(plain.inv_freq, torch.tensor([10000.0 ** (-i / 8) for i in (0, 2, 4, 6)]))
    lin = RotaryEmbedding(8, scaling="linear", factor=4.0)
    torch.testing.assert_close(lin.angles(torch.tensor([8])), plain.angles(torch.tensor([2])))
    ntk = RotaryEmbedding(8, scaling="ntk", factor=4.0)
    base = 10000.0 * 4.0 ** (8 / 6)
    torch.testing.assert_close(ntk.inv_freq, torch.tensor([base ** (-i / 8) for i in (0, 2, 4, 6)]))
    assert ntk.inv_freq[0] == 1.0 and ntk.inv_freq[-1] < plain.inv_freq[-1]


def test_rope_errors():
    with pytest.raises(ShapeError, match="even"):
        RotaryEmbedding(7)
    with pytest.raises(AttnKitError, match="scaling"):
        RotaryEmbedding(8, scaling="yarn")
    with pytest.raises(AttnKitError, match="factor"):
        RotaryEmbedding(8, scaling="linear", factor=0.5)
    with pytest.raises(ShapeError, match="last dim 8"):
        RotaryEmbedding(8)(torch.zeros(1, 1, 3, 4), torch.arange(3))
    with pytest.raises(ShapeError, match="positions"):
        RotaryEmbedding(8)(torch.zeros(1, 1, 3, 8), torch.arange(4))


def test_sinusoidal_table_matches_the_paper():
    pe = sinusoidal_encoding(torch.arange(50), 16)
    p, i = 37, 3
    assert math.isclose(pe[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / 16)), rel_tol=1e-5)
    assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / 16)), rel_tol=1e-5)
    enc = SinusoidalPositionalEncoding(16)
    x = torch.zeros(2, 10, 16)
    torch.testing.assert_close(enc(x, offset=5)[0], pe[5:15])
    with pytest.raises(ShapeError, match="expects x"):
        enc(torch.zeros(2, 10, 8))


def _paper_slopes(n):
    """ALiBi slopes as written in Press et al. 2022 (and their reference code)."""
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    if math.log2(n).is_integer():
        return pow2(n)
    closest = 2 ** math.floor(math.log2(n))
    return pow2(closest) + _paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 12, 16, 20, 32])
def test_alibi_slopes_match_the_paper(n):
    torch.testing.assert_close(scores.alibi_slopes(n), torch.tensor(_paper_slopes(n)))
    if n == 8:
        torch.testing.assert_close(scores.alibi_slopes(8), torch.tensor([2.0 ** -k for k in range(1, 9)]))


def test_alibi_mod_bias():
    bias = alibi_mod(4).as_bias(1, 4, 3, 5, dtype=torch.float32, device=torch.device("cpu"))
    i_abs = torch.arange(3).view(3, 1) + 2  # query i sits at key position i + lk - lq
    want = -scores.alibi_slopes(4).view(4, 1, 1) * (torch.arange(5).view(1, 5) - i_abs).abs()
    torch.testing.assert_close(bias[0], want)
