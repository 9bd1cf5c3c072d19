"""neighborhood_2d: the dense form against a loop over grid coordinates, the analytic tile classes
against the dense form, attention through the block-skipping implementations, value semantics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, ShapeError
from attnkit.masks import EMPTY, FULL, PARTIAL
from attnkit.masks.plan import mask_key, tile_plan


def direct(height: int, width: int, radius: int, dilation: int = 1, causal: bool = False,
           extra: int = 0) -> torch.Tensor:
    """The mask built by looping over every pair of grid coordinates."""
    n = extra + height * width
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if i < extra or j < extra:
                ok = True
            else:
                (yi, xi), (yj, xj) = divmod(i - extra, width), divmod(j - extra, width)
                dy, dx = yi - yj, xi - xj
                ok = (max(abs(dy), abs(dx)) <= radius * dilation and dy % dilation == 0 and dx % dilation == 0)
            out[i, j] = ok and (j <= i or not causal)
    return out


def brute_kinds(dense: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """Tile kinds read off the dense mask (ragged last tiles count their in-range part)."""
    t, s = dense.shape
    nq, nk = math.ceil(t / bq), math.ceil(s / bk)
    out = torch.empty(nq, nk, dtype=torch.int8)
    for qi, ki in itertools.product(range(nq), range(nk)):
        tile = dense[qi * bq:(qi + 1) * bq, ki * bk:(ki + 1) * bk]
        out[qi, ki] = FULL if tile.all() else (PARTIAL if tile.any() else EMPTY)
    return out


GRIDS = [(1, 1), (3, 3), (4, 6), (5, 3), (2, 7)]
SHAPES = [(0, 1, False, 0), (1, 1, False, 0), (2, 1, False, 1), (1, 2, False, 0), (1, 1, True, 0),
          (1, 2, True, 2), (9, 1, False, 0)]  # (radius, dilation, causal, extra tokens)


@pytest.mark.parametrize("height,width", GRIDS)
@pytest.mark.parametrize("radius,dilation,causal,extra", SHAPES)
def test_dense_matches_loop_over_grid_coordinates(height, width, radius, dilation, causal, extra):
    m = masks.neighborhood_2d(height, width, radius, dilation=dilation, causal=causal, extra_tokens=extra)
    n = extra + height * width
    assert torch.equal(m.dense(n, n), direct(height, width, radius, dilation, causal, extra))


def test_docstring_grid_and_limits():
    d = masks.neighborhood_2d(3, 3, 1).dense(9, 9)
    assert masks.to_string(d).splitlines()[0] == "1 1 0 1 1 0 0 0 0"
    assert d.sum(1).tolist() == [4, 6, 4, 6, 9, 6, 4, 6, 4]
    assert torch.equal(masks.neighborhood_2d(4, 5, 0).dense(20, 20), torch.eye(20, dtype=torch.bool))
    assert bool(masks.neighborhood_2d(4, 5, 4).dense(20, 20).all())  # radius covering the grid: global
    causal = masks.neighborhood_2d(4, 5, 9, causal=True).dense(20, 20)
    assert torch.equal(causal, masks.causal().dense(20, 20))


@pytest.mark.parametrize("height,width", GRIDS + [(6, 5)])
@pytest.mark.parametrize("radius,dilation,causal,extra", SHAPES)
@pytest.mark.parametrize("bq,bk", [(4, 4), (5, 7), (3, 11), (16, 16)])
def test_analytic_tiles_against_dense(height, width, radius, dilation, causal, extra, bq, bk):
    m = masks.neighborhood_2d(height, width, radius, dilation=dilation, causal=causal, extra_tokens=extra)
    n = extra + height * width
    dense = m.dense(n, n)
    raw = m.tile_kinds(n, n, bq, bk)[0, 0]  # the analytic classes, before any refinement
    exact = brute_kinds(dense, bq, bk)
    assert raw.shape == exact.shape
    assert bool((exact[raw == EMPTY] == EMPTY).all())  # every tile called empty is all False
    assert bool((exact[raw == FULL] == FULL).all())  # every tile called full is all True
    if not causal:  # exact from the geometry
        assert torch.equal(raw, exact)
    else:  # only tiles the causal diagonal crosses may be left partial
        nq, nk = raw.shape
        loose = (raw != exact).nonzero().tolist()
        for qi, ki in loose:
            assert raw[qi, ki] == PARTIAL
            assert ki * bk <= min(n - 1, (qi + 1) * bq - 1) and qi * bq <= min(n - 1, (ki + 1) * bk - 1)
    assert torch.equal(m.blocks(n, n, bq, bk).to_dense()[0, 0], dense)


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 7), width=st.integers(1, 7), radius=st.integers(0, 4), dilation=st.integers(1, 3),
       extra=st.integers(0, 3), bq=st.integers(1, 13), bk=st.integers(1, 13))
def test_tiles_property(height, width, radius, dilation, extra, bq, bk):
    m = masks.neighborhood_2d(height, width, radius, dilation=dilation, extra_tokens=extra)
    n = extra + height * width
    assert torch.equal(m.tile_kinds(n, n, bq, bk)[0, 0], brute_kinds(m.dense(n, n), bq, bk))


def test_tiles_at_4096_tokens_without_a_dense_buffer():
    m = masks.neighborhood_2d(64, 64, 3)  # a 256 x 256 canvas in 4 x 4 patches
    bm = m.blocks(4096, 4096, 64, refine=False)
    c = bm.counts()
    # one grid row per tile: a query row sees the key rows within 3 of it, never all of one (64 > 7 columns)
    assert c == {"empty": 64 * 64 - (64 * 7 - 2 * (1 + 2 + 3)), "partial": 64 * 7 - 2 * (1 + 2 + 3), "full": 0}
    with_cls = masks.neighborhood_2d(64, 64, 3, extra_tokens=1).blocks(4097, 4097, 64, refine=False)
    assert with_cls.kinds[0, 0, :, 0].ne(EMPTY).all() and with_cls.kinds[0, 0, 0].ne(EMPTY).all()


CASES = [(4, 6, 1, 1, False, 0), (5, 5, 1, 2, False, 1), (6, 3, 2, 1, True, 0), (7, 9, 2, 1, False, 1)]


@pytest.mark.parametrize("height,width,radius,dilation,causal,extra", CASES)
@pytest.mark.parametrize("impl,options", [("block_sparse", {"block": 8}),
                                          ("block_sparse", {"block_q": 5, "block_k": 7}),
                                          ("blockwise", {"block_q": 8, "block_k": 8}), ("block_sparse", {})])
def test_attention_through_block_skipping_impls_equals_reference(height, width, radius, dilation, causal, extra,
                                                                 impl, options):
    m = masks.neighborhood_2d(height, width, radius, dilation=dilation, causal=causal, extra_tokens=extra)
    n = extra + height * width
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    want = attnkit.attention(q, k, v, m, impl="reference")
    got = attnkit.attention(q, k, v, m, impl=impl, options=options)
    torch.testing.assert_close(got, want)
    gw = torch.autograd.grad(want.square().sum(), (q, k, v))
    gg = torch.autograd.grad(got.square().sum(), (q, k, v))
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b)


def test_value_semantics_repr_and_shared_plan():
    a = masks.neighborhood_2d(4, 4, 1, extra_tokens=1)
    b = masks.neighborhood_2d(4, 4, 1, extra_tokens=1)
    assert a == b and hash(a) == hash(b) and mask_key(a) == mask_key(b)
    assert a != masks.neighborhood_2d(4, 4, 1) and a != masks.neighborhood_2d(4, 4, 1, dilation=2, extra_tokens=1)
    assert repr(a) == "Neighborhood2D(height=4, width=4, radius=1, dilation=1, causal=False, extra_tokens=1)"
    assert tile_plan(a, 17, 17, 4) is tile_plan(b, 17, 17, 4)
    assert masks.neighborhood_2d(4.0, 4, 1) == masks.neighborhood_2d(4, 4, 1)  # whole floats are ints
    both = a & masks.causal()
    assert torch.equal(both.dense(17, 17), a.dense(17, 17) & masks.causal().dense(17, 17))


@pytest.mark.parametrize("kwargs,words", [
    (dict(height=0, width=3, radius=1), "height"), (dict(height=3, width=-1, radius=1), "width"),
    (dict(height=3, width=3, radius=-1), "radius"), (dict(height=3, width=3, radius=1.5), "radius"),
    (dict(height=3, width=3, radius=1, dilation=0), "dilation"),
    (dict(height=3, width=3, radius=1, extra_tokens=-2), "extra_tokens"),
    (dict(height=3, width=3, radius=1, causal="yes"), "causal"), (dict(height=True, width=3, radius=1), "height"),
])
def test_bad_arguments_are_refused(kwargs, words):
    with pytest.raises(AttnKitError, match=words):
        masks.neighborhood_2d(**kwargs)


def test_wrong_sequence_length_is_refused():
    m = masks.neighborhood_2d(3, 3, 1, extra_tokens=1)
    q = torch.randn(1, 1, 9, 4)
    with pytest.raises(ShapeError, match="lq = lk = extra_tokens \\+ height \\* width = 10"):
        attnkit.attention(q, q, q, m)
    with pytest.raises(ShapeError, match="got lq=9, lk=10"):
        m.dense(9, 10)
    with pytest.raises(ShapeError):
        m.blocks(11, 11, 4)
