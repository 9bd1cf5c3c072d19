"""Masks: each primitive against a direct loop construction, composition, tile classification."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import masks
from attnkit.errors import AttnKitError, DTypeError, ShapeError
from attnkit.masks import EMPTY, FULL, PARTIAL


def grid(t: int, s: int, pred) -> torch.Tensor:
    """Direct construction: a Python loop over every (i, j)."""
    return torch.tensor([[bool(pred(i, j)) for j in range(s)] for i in range(t)])


SIZES = [(1, 1), (5, 5), (3, 8), (8, 3), (7, 12)]


@pytest.mark.parametrize("t,s", SIZES)
def test_causal_both_alignments(t, s):
    assert torch.equal(masks.causal().dense(t, s), grid(t, s, lambda i, j: j <= i + s - t))
    assert torch.equal(masks.causal("top_left").dense(t, s), grid(t, s, lambda i, j: j <= i))


def test_causal_docstring_grid():
    assert masks.to_string(masks.causal().dense(2, 5)) == "1 1 1 1 0\n1 1 1 1 1"
    assert masks.to_string(masks.causal("top_left").dense(2, 5)) == "1 0 0 0 0\n1 1 0 0 0"


@pytest.mark.parametrize("t,s", SIZES)
@pytest.mark.parametrize("left,right", [(0, 0), (1, 1), (2, 0), (0, 3), (math.inf, 0)])
def test_window(t, s, left, right):
    off = s - t
    want = grid(t, s, lambda i, j: i + off - left <= j <= i + off + right)
    assert torch.equal(masks.window(left, right).dense(t, s), want)


@pytest.mark.parametrize("t,s", SIZES)
@pytest.mark.parametrize("w,d,causal", [(1, 2, False), (2, 3, False), (2, 2, True), (3, 1, False)])
def test_dilated(t, s, w, d, causal):
    off = s - t

    def pred(i, j):
        dist = j - (i + off)
        hi = 0 if causal else w * d
        return -w * d <= dist <= hi and dist % d == 0

    assert torch.equal(masks.dilated(w, d, causal=causal).dense(t, s), grid(t, s, pred))


@pytest.mark.parametrize("t,s", SIZES)
def test_global_tokens(t, s):
    g = [0, 2]
    off = s - t
    want = grid(t, s, lambda i, j: (i + off) in g or j in g)
    assert torch.equal(masks.global_tokens(g).dense(t, s), want)


def test_block_sparse_layout():
    layout = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    m = masks.block_sparse(layout, 2)
    assert masks.to_string(m.dense(4, 4)) == "1 1 0 0\n1 1 0 0\n1 1 1 1\n1 1 1 1"
    per_head = torch.stack([layout, ~layout])
    d = masks.block_sparse(per_head, (2, 3)).dense(4, 6)
    assert d.shape == (1, 2, 4, 6)
    assert torch.equal(d[0, 1], grid(4, 6, lambda i, j: not layout[i // 2, j // 3]))


def test_padding_and_key_mask():
    lengths = torch.tensor([3, 1])
    d = masks.padding(lengths).dense(2, 4)
    assert d.shape == (2, 1, 2, 4)
    assert d[0, 0, 0].tolist() == [True, True, True, False]
    assert d[1, 0, 1].tolist() == [True, False, False, False]
    keep = torch.tensor([[True, False, True, True], [False, False, False, True]])
    km = masks.from_key_padding(keep).dense(3, 4)
    assert torch.equal(km[:, 0, 0], keep)
    assert torch.equal(masks.from_key_padding(~keep, true_means="ignore").dense(3, 4), km)


def test_random_is_deterministic_and_has_its_density():
    a = masks.random(0.3, seed=1).dense(200, 300)
    b = masks.random(0.3, seed=1).dense(200, 300)
    c = masks.random(0.3, seed=2).dense(200, 300)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.float().mean().item() - 0.3) < 0.01  # 60k draws: sd ~0.002
    # the mask is a function of (i, j) only: a sub-grid of a larger render is the same
    assert torch.equal(masks.random(0.3, seed=1).dense(50, 60), masks.random(0.3, seed=1).mod(
        torch.zeros(1), torch.zeros(1), torch.arange(50).view(-1, 1), torch.arange(60).view(1, -1), 0, 0))


def test_composition_semantics():
    t, s = 6, 6
    a, b = masks.causal(), masks.window(1)
    da, db = a.dense(t, s), b.dense(t, s)
    assert torch.equal((a & b).dense(t, s), da & db)
    assert torch.equal((a | b).dense(t, s), da | db)
    assert torch.equal((~a).dense(t, s), ~da)
    assert torch.equal((a & masks.padding([2, 6])).dense(t, s), da & masks.padding([2, 6]).dense(t, s))
    assert torch.equal((a & torch.eye(6, dtype=torch.bool)).dense(t, s), torch.eye(6, dtype=torch.bool))


def test_mask_mod_is_flex_compatible():
    mm = masks.window(1).mask_mod(4, 4)
    b = h = torch.tensor(0)
    assert bool(mm(b, h, torch.tensor(2), torch.tensor(1)))
    assert not bool(mm(b, h, torch.tensor(3), torch.tensor(0)))


def test_from_mod():
    m = masks.from_mod(lambda b, h, i, j: (i + j) % 2 == 0, "checker")
    assert torch.equal(m.dense(3, 3), grid(3, 3, lambda i, j: (i + j) % 2 == 0))


# ------------------------------------------------------------------------------------------
# tile classification
# ------------------------------------------------------------------------------------------


def _tiles_from_dense(dense4: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """Exact tile kinds by brute force over the dense mask (partial last tiles handled)."""
    b, h, t, s = dense4.shape
    nq, nk = math.ceil(t / bq), math.ceil(s / bk)
    out = torch.empty(b, h, nq, nk, dtype=torch.int8)
    for bi, hi, qi, ki in itertools.product(range(b), range(h), range(nq), range(nk)):
        tile = dense4[bi, hi, qi * bq : (qi + 1) * bq, ki * bk : (ki + 1) * bk]
        out[bi, hi, qi, ki] = FULL if tile.all() else (PARTIAL if tile.any() else EMPTY)
    return out


def _mask_zoo(t: int = 15, s: int = 15):
    layout = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return {
        "causal": masks.causal(),
        "causal_tl": masks.causal("top_left"),
        "window": masks.window(3, 1),
        "dilated": masks.dilated(2, 3),
        "global": masks.global_tokens([1, 9]),
        "random": masks.random(0.5, 4),
        "block_sparse": masks.block_sparse(layout, 5),
        "padding": masks.padding([0, min(7, s), s]),
        "key_mask": masks.from_key_padding(torch.rand(3, s, generator=torch.Generator().manual_seed(0)) < 0.5),
        "dense": masks.from_tensor(torch.rand(t, s, generator=torch.Generator().manual_seed(1)) < 0.3),
        "dense_per_batch": masks.from_tensor(torch.rand(2, 1, t, s, generator=torch.Generator().manual_seed(2)) < 0.6),
        "and": masks.causal() & masks.window(4, 0),
        "or": masks.global_tokens([0]) | masks.window(1),
        "not": ~masks.causal(),
        "full": masks.full(),
    }


@pytest.mark.parametrize("name", list(_mask_zoo()))
@pytest.mark.parametrize("t,s,bq,bk", [(15, 15, 4, 4), (15, 15, 5, 3), (10, 15, 4, 6), (15, 10, 16, 16)])
def test_blocks_match_brute_force(name, t, s, bq, bk):
    m = _mask_zoo(t, s)[name]
    bm = m.blocks(t, s, bq, bk)
    want = _tiles_from_dense(m.dense4(t, s), bq, bk)
    assert torch.equal(bm.kinds, want.expand_as(bm.kinds)), f"{name}\n{bm.to_string()}"
    assert torch.equal(bm.to_dense(), m.dense4(t, s).expand_as(bm.to_dense()))


@pytest.mark.parametrize("name", ["causal", "window", "dilated", "global", "block_sparse", "padding", "and", "not"])
def test_unrefined_classification_is_safe(name):
    """Without refinement a tile may be PARTIAL when it is empty/full, but never the reverse."""
    m = _mask_zoo()[name]
    raw = m.blocks(15, 15, 4, 4, refine=False).kinds
    exact = _tiles_from_dense(m.dense4(15, 15), 4, 4).expand_as(raw)
    assert ((raw == exact) | (raw == PARTIAL)).all()


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 24), s=st.integers(1, 24), bq=st.integers(1, 9), bk=st.integers(1, 9),
       left=st.integers(0, 6), right=st.integers(0, 6))
def test_band_tiles_property(t, s, bq, bk, left, right):
    m = masks.window(left, right) & masks.causal()
    assert torch.equal(m.blocks(t, s, bq, bk).kinds[0, 0], _tiles_from_dense(m.dense4(t, s), bq, bk)[0, 0])


def test_blocks_scale_without_dense_buffer():
    """Classifying a 128k x 128k causal window mask takes no lq x lk buffer (it would be 16 GiB)."""
    bm = (masks.causal() & masks.window(512, 0)).blocks(131072, 131072, 128, 128, refine=False)
    c = bm.counts()
    assert bm.shape == (1024, 1024)
    assert c["partial"] + c["full"] == 1024 * 5 - (1 + 2 + 3 + 4)  # diagonal band of 5 tiles per row
    assert bm.density() < 0.005


def test_block_mask_helpers():
    bm = masks.causal().blocks(8, 8, 4)
    assert bm.to_string() == "+.\n#+"
    assert bm.counts() == {"empty": 1, "partial": 2, "full": 1}
    assert bm.density() == 0.75 and bm.sparsity() == 0.25
    assert "BlockMask" in repr(bm)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def test_mask_errors():
    with pytest.raises(DTypeError, match="torch.bool"):
        masks.from_tensor(torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="2-D to 4-D"):
        masks.from_tensor(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(AttnKitError, match="density"):
        masks.random(1.5)
    with pytest.raises(AttnKitError, match="align"):
        masks.causal("middle")
    with pytest.raises(AttnKitError, match="window left must be an int >= 0 or math.inf; got -1"):
        masks.window(-1)
    with pytest.raises(ShapeError, match="padding lengths must be in"):
        masks.padding([5]).validate(3, 4, 1, 1)
    with pytest.raises(ShapeError, match="1-D integer"):
        masks.padding([[1, 2]])
    with pytest.raises(ShapeError, match="covers"):
        masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), 2).validate(8, 4, 1, 1)
    with pytest.raises(DTypeError, match="key padding mask must be a bool tensor"):
        masks.from_key_padding(torch.ones(2, 3))
    with pytest.raises(ShapeError, match="batch size 3"):
        masks.padding([1, 2, 3]).validate(4, 4, 2, 1)
