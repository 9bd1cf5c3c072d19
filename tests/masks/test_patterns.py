"""Sparse patterns: each against a direct loop construction, its docstring density formula, and
its analytic tile classification (never a T x S buffer)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import masks
from attnkit.errors import AttnKitError, UnknownNameError
from attnkit.masks import EMPTY, FULL, patterns


def grid(t: int, s: int, pred) -> torch.Tensor:
    """Direct construction: a Python loop over every (i, j)."""
    return torch.tensor([[bool(pred(i, j)) for j in range(s)] for i in range(t)])


SIZES = [(1, 1), (9, 9), (23, 23), (32, 32), (7, 19), (19, 7)]


# ---------------------------------------------------------------------------------------------
# dense rendering against independent constructions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t,s", SIZES)
@pytest.mark.parametrize("w", [0, 1, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_matches_loop(t, s, w, causal):
    off = s - t
    want = grid(t, s, lambda i, j: (0 <= i + off - j <= w) if causal else abs(i + off - j) <= w)
    assert torch.equal(patterns.sliding_window(w, causal=causal).dense(t, s), want)


@pytest.mark.parametrize("t,s", SIZES)
@pytest.mark.parametrize("w,d,causal", [(1, 2, False), (2, 3, True), (3, 1, False)])
def test_dilated_window_matches_loop(t, s, w, d, causal):
    off = s - t

    def pred(i, j):
        dist = i + off - j
        ok = 0 <= dist <= w * d if causal else abs(dist) <= w * d
        return ok and dist % d == 0

    assert torch.equal(patterns.dilated_window(w, d, causal=causal).dense(t, s), grid(t, s, pred))


@pytest.mark.parametrize("t,s", SIZES)
@pytest.mark.parametrize("stride", [1, 3, 5])
@pytest.mark.parametrize("causal", [True, False])
def test_strided_matches_loop(t, s, stride, causal):
    off = s - t

    def pred(i, j):
        dist = i + off - j
        if causal:
            return dist >= 0 and (dist < stride or dist % stride == 0)
        return abs(dist) < stride or dist % stride == 0

    assert torch.equal(patterns.strided(stride, causal=causal).dense(t, s), grid(t, s, pred))


@pytest.mark.parametrize("t,s", SIZES)
@pytest.mark.parametrize("stride,c", [(4, 1), (5, 2), (3, 3)])
@pytest.mark.parametrize("causal", [True, False])
def test_fixed_matches_loop(t, s, stride, c, causal):
    off = s - t

    def pred(i, j):
        keep = (i + off) // stride == j // stride or j % stride >= stride - c
        return keep and (j <= i + off if causal else True)

    assert torch.equal(patterns.fixed(stride, c, causal=causal).dense(t, s), grid(t, s, pred))


@pytest.mark.parametrize("t", [9, 23])
def test_longformer_matches_loop(t):
    g = [0, 5]
    want = grid(t, t, lambda i, j: abs(i - j) <= 2 or i in g or j in g)
    assert torch.equal(patterns.longformer(2, g).dense(t, t), want)
    want_d = grid(t, t, lambda i, j: (abs(i - j) <= 4 and (i - j) % 2 == 0) or i in g or j in g)
    assert torch.equal(patterns.longformer(2, g, dilation=2).dense(t, t), want_d)


def test_from_layout_matches_loop():
    lay = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    want = grid(7, 11, lambda i, j: bool(lay[i // 4, j // 4]))
    assert torch.equal(patterns.from_layout(lay, 4).dense(7, 11), want)


@pytest.mark.parametrize("n,b,r", [(8, 4, 2), (10, 3, 3), (4, 5, 9)])
def test_random_blocks_properties(n, b, r):
    t = n * b
    m = patterns.random_blocks(r, b, seed=3)
    dense = m.dense(t, t)
    lay = dense.view(n, b, n, b)
    assert (lay == lay[:, :1, :, :1]).all()  # constant on every block
    per_row = lay[:, 0, :, 0].sum(-1)
    assert (per_row == min(r, n)).all()
    assert torch.equal(patterns.random_blocks(r, b, seed=3).dense(t, t), dense)  # deterministic
    if r < n:
        assert not torch.equal(patterns.random_blocks(r, b, seed=4).dense(t, t), dense)


def test_random_blocks_causal_stays_below_diagonal():
    m = patterns.random_blocks(2, 4, seed=1, causal=True)
    lay = m.dense(40, 40).view(10, 4, 10, 4)[:, 0, :, 0]
    assert not lay.triu(1).any()
    assert (lay.sum(-1) == torch.tensor([1, 2, 2, 2, 2, 2, 2, 2, 2, 2])).all()


@pytest.mark.parametrize("n,w,g,r", [(10, 3, 2, 3), (12, 5, 3, 1), (9, 1, 0, 2)])
def test_bigbird_matches_loop_construction(n, w, g, r):
    b = 4
    t = n * b
    m = patterns.bigbird(b, window_blocks=w, global_blocks=g, random_blocks=r, seed=5)
    lay = m.dense(t, t).view(n, b, n, b)
    assert (lay == lay[:, :1, :, :1]).all()
    lay = lay[:, 0, :, 0]
    first, last = (g + 1) // 2, g // 2
    glob = [x < first or x >= n - last for x in range(n)]
    fixed_part = grid(n, n, lambda qi, ki: abs(qi - ki) <= w // 2 or glob[qi] or glob[ki])
    assert (lay | ~fixed_part).all()  # the window and global parts are all there
    extra = lay & ~fixed_part  # the random part
    for qi in range(n):
        free = int((~fixed_part[qi]).sum())
        assert int(extra[qi].sum()) == min(r, free)


def test_pattern_composes_with_masks():
    t = 20
    m = patterns.bigbird(4) & masks.causal()
    assert torch.equal(m.dense(t, t), patterns.bigbird(4).dense(t, t) & masks.causal().dense(t, t))
    m2 = patterns.strided(4) | patterns.global_tokens([3])
    assert torch.equal(m2.dense(t, t), patterns.strided(4).dense(t, t) | masks.global_tokens([3]).dense(t, t))


# ---------------------------------------------------------------------------------------------
# densities against the docstring formulas
# ---------------------------------------------------------------------------------------------


def window_pairs(t, w, causal):
    return t * (w + 1) - w * (w + 1) // 2 if causal else t * (2 * w + 1) - w * (w + 1)


def dilated_pairs(t, w, d, causal):
    return t * (w + 1) - d * w * (w + 1) // 2 if causal else t * (2 * w + 1) - d * w * (w + 1)


def strided_pairs(t, st):
    m = (t - 1) // st
    return st * t - st * (st - 1) // 2 + m * t - st * m * (m + 1) // 2


def fixed_pairs(t, st, c, causal):
    n = t // st
    return t * (st + 1) // 2 + c * st * n * (n - 1) // 2 if causal else t * st + t * c * (n - 1)


def bigbird_blocks(n, r):
    return 2 * n + 2 * (4 + r) + (n - 4) * (5 + r)


@pytest.mark.parametrize("t", [40, 100, 257])
@pytest.mark.parametrize("causal", [False, True])
def test_density_formulas(t, causal):
    assert patterns.pair_count(patterns.sliding_window(7, causal=causal), t) == window_pairs(t, 7, causal)
    assert patterns.pair_count(patterns.dilated_window(3, 4, causal=causal), t) == dilated_pairs(t, 3, 4, causal)
    assert patterns.pair_count(patterns.global_tokens([0, 9, 33]), t) == 2 * 3 * t - 9


@pytest.mark.parametrize("t,st", [(64, 8), (100, 7), (99, 10)])
def test_strided_density_formula(t, st):
    assert patterns.pair_count(patterns.strided(st), t) == strided_pairs(t, st)


@pytest.mark.parametrize("t,st,c", [(64, 8, 1), (96, 8, 3), (60, 6, 6)])
@pytest.mark.parametrize("causal", [True, False])
def test_fixed_density_formula(t, st, c, causal):
    assert patterns.pair_count(patterns.fixed(st, c, causal=causal), t) == fixed_pairs(t, st, c, causal)


@pytest.mark.parametrize("n,b,r", [(16, 4, 2), (12, 8, 1)])
def test_random_blocks_density_formula(n, b, r):
    assert patterns.density(patterns.random_blocks(r, b), n * b) == pytest.approx(r / n)


@pytest.mark.parametrize("n,r", [(8, 3), (20, 3), (11, 0)])
def test_bigbird_density_formula(n, r):
    b = 4
    m = patterns.bigbird(b, random_blocks=r)
    assert patterns.pair_count(m, n * b) == bigbird_blocks(n, r) * b * b
    assert patterns.block_density(m, n * b, block=b) == pytest.approx(bigbird_blocks(n, r) / n**2)


def test_density_helpers_agree_with_dense():
    m = patterns.longformer(3, [2]) & masks.causal()
    d = m.dense(50, 50)
    assert patterns.pair_count(m, 50) == int(d.sum())
    assert patterns.density(m, 50) == pytest.approx(float(d.float().mean()))
    lay = patterns.block_layout(m, 50, block=8)
    want = torch.nn.functional.pad(d, (0, 6, 0, 6)).view(7, 8, 7, 8).any(-1).any(1)
    assert torch.equal(lay, want)


def test_to_string_small_picture():
    assert patterns.to_string(patterns.fixed(2, 1), 4) == "1 0 0 0\n1 1 0 0\n0 1 1 0\n0 1 1 1"


# ---------------------------------------------------------------------------------------------
# tile classification
# ---------------------------------------------------------------------------------------------


def _cases():
    return {
        "window": patterns.sliding_window(5),
        "causal_window": patterns.sliding_window(6, causal=True),
        "dilated": patterns.dilated_window(2, 3),
        "strided": patterns.strided(5),
        "strided_bi": patterns.strided(4, causal=False),
        "fixed": patterns.fixed(6, 2),
        "fixed_bi": patterns.fixed(5, 1, causal=False),
        "longformer": patterns.longformer(3, [1, 17]),
        "random_blocks": patterns.random_blocks(2, 5),
        "bigbird": patterns.bigbird(4),
    }


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(list(_cases())), t=st.integers(1, 60), s=st.integers(1, 60),
       bq=st.integers(1, 9), bk=st.integers(1, 9))
def test_tile_kinds_are_sound(name, t, s, bq, bk):
    """Unrefined (analytic) kinds never call a tile empty that holds a kept pair, nor full one
    that misses one."""
    m = _cases()[name]
    if name in ("random_blocks", "bigbird"):
        s = t  # block layouts are square problems here
    dense = m.dense(t, s)
    kinds = m.blocks(t, s, bq, bk, refine=False).kinds[0, 0]
    nq, nk = kinds.shape
    padded_any = torch.nn.functional.pad(dense, (0, nk * bk - s, 0, nq * bq - t), value=False)
    padded_all = torch.nn.functional.pad(dense, (0, nk * bk - s, 0, nq * bq - t), value=True)
    anyv = padded_any.view(nq, bq, nk, bk).any(-1).any(1)
    allv = padded_all.view(nq, bq, nk, bk).all(-1).all(1)
    assert not (anyv & (kinds == EMPTY)).any()
    assert not (~allv & (kinds == FULL)).any()


@pytest.mark.parametrize("name", ["strided", "fixed", "window", "causal_window", "dilated"])
def test_structured_patterns_classify_exactly(name):
    """The analytic kinds of single-part patterns leave no empty tile marked partial."""
    m = _cases()[name]
    coarse = m.blocks(61, 61, 8, refine=False).kinds
    exact = m.blocks(61, 61, 8, refine=True).kinds
    assert torch.equal(coarse != EMPTY, exact != EMPTY)


@pytest.mark.parametrize("pattern", [patterns.sliding_window(512, causal=True), patterns.strided(256),
                                     patterns.fixed(256, 8), patterns.bigbird(64)],
                         ids=["causal_window", "strided", "fixed", "bigbird"])
def test_classification_at_128k_needs_no_t_by_s_buffer(pattern):
    t = 131072
    bm = pattern.blocks(t, t, 128, refine=False)
    assert bm.kinds.shape[-2:] == (1024, 1024)
    assert 0 < bm.density() < 0.3


def test_window_count_at_128k_matches_formula():
    assert patterns.pair_count(patterns.sliding_window(512, causal=True), 131072) == window_pairs(131072, 512, True)


# ---------------------------------------------------------------------------------------------
# errors and names
# ---------------------------------------------------------------------------------------------


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(AttnKitError, match="stride"):
        patterns.strided(0)
    with pytest.raises(AttnKitError, match="summary"):
        patterns.fixed(4, 5)
    with pytest.raises(AttnKitError, match="window_blocks"):
        patterns.bigbird(64, window_blocks=2)
    with pytest.raises(AttnKitError, match="dilation"):
        patterns.dilated_window(2, 0)
    with pytest.raises(AttnKitError, match="block_size"):
        patterns.random_blocks(2, 0)


def test_build_by_name():
    assert set(patterns.PATTERNS) >= {"sliding_window", "strided", "fixed", "longformer", "bigbird", "random_blocks"}
    m = patterns.build("strided", stride=4)
    assert torch.equal(m.dense(12, 12), patterns.strided(4).dense(12, 12))
    with pytest.raises(UnknownNameError, match="pattern"):
        patterns.build("nope")
    assert math.isclose(patterns.density(patterns.build("causal"), 10), 55 / 100)


# ---------------------------------------------------------------------------------------------
# pictures and the command line
# ---------------------------------------------------------------------------------------------


def test_mask_image_small_is_the_dense_mask():
    from attnkit.masks.plot import mask_image

    m = patterns.strided(3)
    assert torch.equal(mask_image(m, 20, 17), m.dense(20, 17).float())


def test_mask_image_large_cells_hold_kept_fractions():
    from attnkit.masks.plot import mask_image

    m = patterns.sliding_window(40, causal=True)
    img = mask_image(m, 1000, max_pixels=100)  # cells of 10 x 10
    assert img.shape == (100, 100)
    want = m.dense(1000, 1000).float().view(100, 10, 100, 10).mean((1, 3))
    torch.testing.assert_close(img, want)


def test_save_mask_writes_a_picture(tmp_path):
    pytest.importorskip("matplotlib")
    from attnkit.masks.plot import save_mask

    path = save_mask(patterns.bigbird(16), tmp_path / "bb.png", 256)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_cli_masks_show_and_list(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from attnkit.cli import main

    out = tmp_path / "w.png"
    assert main(["masks", "show", "causal_window", "--T", "512", "--param", "window=32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"kept pairs {window_pairs(512, 32, True)} of {512 * 512}" in text
    assert out.exists()
    assert main(["masks", "list"]) == 0
    assert "bigbird" in capsys.readouterr().out
    assert main(["masks", "show", "strided", "--param", "stride"]) == 2  # a usage error: one line, exit code 2
    assert "KEY=VALUE" in capsys.readouterr().err
