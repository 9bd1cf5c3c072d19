"""The tile plan (:class:`attnkit.masks.BlockMask`): its kernel form against brute force, the one
memo every tile-based implementation shares, and conversion to and from FlexAttention."""

from __future__ import annotations

import gc
import itertools
import math
import sys
import warnings
import weakref

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, UnsupportedError
from attnkit.masks import EMPTY, FULL, PARTIAL, patterns
from attnkit.masks import plan as mbase


def _kinds_from_dense(dense4: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """Exact tile kinds by brute force over the dense mask (ragged last tiles count their in-range part)."""
    b, h, t, s = dense4.shape
    nq, nk = math.ceil(t / bq), math.ceil(s / bk)
    out = torch.empty(b, h, nq, nk, dtype=torch.int8)
    for bi, hi, qi, ki in itertools.product(range(b), range(h), range(nq), range(nk)):
        tile = dense4[bi, hi, qi * bq:(qi + 1) * bq, ki * bk:(ki + 1) * bk]
        out[bi, hi, qi, ki] = FULL if tile.all() else (PARTIAL if tile.any() else EMPTY)
    return out


def _zoo():
    g = torch.Generator().manual_seed(0)
    return {
        "causal": masks.causal(),
        "causal_top_left": masks.causal("top_left"),
        "window": masks.window(5, 2),
        "padding": masks.padding([0, 9, 23]),
        "per_head_layout": masks.block_sparse(torch.rand(2, 4, 4, generator=g) < 0.5, 6),
        "bigbird": patterns.bigbird(6, random_blocks=1),
        "causal_and_padding": masks.causal() & masks.padding([3, 23, 17]),
        "dense": masks.from_tensor(torch.rand(3, 1, 19, 23, generator=g) < 0.3),
    }


@pytest.mark.parametrize("name", list(_zoo()))
@pytest.mark.parametrize("bq,bk", [(4, 4), (5, 7), (32, 32)])
def test_kernel_form_lists_the_full_and_partial_key_blocks(name, bq, bk):
    t, s = 19, 23
    m = _zoo()[name]
    bm = m.blocks(t, s, bq, bk)
    want = _kinds_from_dense(m.dense4(t, s), bq, bk)
    assert torch.equal(bm.kinds, want.expand_as(bm.kinds))
    nq, nk = bm.shape
    for kind, num, idx, q_num, q_idx in ((FULL, bm.full_kv_num, bm.full_kv_indices, bm.full_q_num, bm.full_q_indices),
                                         (PARTIAL, bm.partial_kv_num, bm.partial_kv_indices, bm.partial_q_num,
                                          bm.partial_q_indices)):
        assert num.dtype == idx.dtype == torch.int32
        assert num.shape == (*bm.kinds.shape[:2], nq) and idx.shape == (*bm.kinds.shape[:2], nq, nk)
        assert q_num.shape == (*bm.kinds.shape[:2], nk) and q_idx.shape == (*bm.kinds.shape[:2], nk, nq)
        for b, h, qi in itertools.product(range(bm.kinds.shape[0]), range(bm.kinds.shape[1]), range(nq)):
            cols = (bm.kinds[b, h, qi] == kind).nonzero().flatten().tolist()  # ascending
            assert idx[b, h, qi, : num[b, h, qi]].tolist() == cols
        for b, h, ki in itertools.product(range(bm.kinds.shape[0]), range(bm.kinds.shape[1]), range(nk)):
            rows = (bm.kinds[b, h, :, ki] == kind).nonzero().flatten().tolist()
            assert q_idx[b, h, ki, : q_num[b, h, ki]].tolist() == rows
    assert torch.equal(bm.to_dense(), m.dense4(t, s).expand_as(bm.to_dense()))
    assert bm.density() == pytest.approx(float((want != EMPTY).float().mean()))
    assert bm.sparsity() == pytest.approx(1 - bm.density())


def test_docstring_example_and_helpers():
    bm = masks.causal().blocks(8, 8, 4)
    assert bm.to_string() == "+.\n#+"
    assert bm.partial_kv_num[0, 0].tolist() == [1, 1] and bm.full_kv_num[0, 0].tolist() == [0, 1]
    assert bm.full_kv_indices[0, 0, 1, 0] == 0 and bm.partial_kv_indices[0, 0, 1, 0] == 1
    assert bm.partial_q_num[0, 0].tolist() == [1, 1] and bm.full_q_num[0, 0].tolist() == [1, 0]
    assert bm.counts() == {"empty": 1, "partial": 2, "full": 1}
    sub = bm.tile_mask(torch.tensor([[0, 0, 1, 1]]))  # the second diagonal tile
    assert torch.equal(sub[0], masks.causal().dense(8, 8)[4:, 4:])
    assert torch.equal(bm.region(2, 7, 1, 6), masks.causal().dense(8, 8)[2:7, 1:6].view(1, 1, 5, 5))


def test_region_slices_broadcast_tensor_masks():
    dense = torch.rand(1, 1, 1, 50, generator=torch.Generator().manual_seed(3)) < 0.5  # (1, 1, 1, S)
    bm = masks.from_tensor(dense).blocks(200, 50, 64, 16)
    got = bm.region(128, 192, 16, 48)
    assert got.shape == (1, 1, 1, 32) and torch.equal(got, dense[..., 16:48])


# ------------------------------------------------------------------------------------------
# the one memo
# ------------------------------------------------------------------------------------------


def test_value_masks_share_one_plan_and_identity_masks_do_not():
    a = mbase.tile_plan(masks.causal() & masks.window(9, 0), 300, 300, 32)
    b = mbase.tile_plan(masks.causal() & masks.window(9, 0), 300, 300, 32, device="cpu")
    assert a is b  # equal by value: one entry
    assert mbase.tile_plan(masks.causal(), 300, 300, 32) is not mbase.tile_plan(masks.causal(), 300, 301, 32)
    p1, p2 = masks.padding([5, 7]), masks.padding([5, 7])
    assert mbase.tile_plan(p1, 16, 16, 4) is mbase.tile_plan(p1, 16, 16, 4)
    assert mbase.tile_plan(p1, 16, 16, 4) is not mbase.tile_plan(p2, 16, 16, 4)


def test_identity_keys_are_never_reused_for_another_mask():
    """Masks made and dropped in a loop often get the id of the previous one; the memo keeps each
    mask it holds alive, so a new mask never finds an old mask's plan."""
    for n in range(40):
        length = (n * 7) % 33
        m = masks.padding([length])
        got = mbase.tile_plan(m, 8, 33, 4).kinds
        assert torch.equal(got, _kinds_from_dense(m.dense4(8, 33), 4, 4)), f"length {length}"
        lay = patterns.random_blocks(1, 4, seed=n)  # its layout is memoised the same way
        assert torch.equal(lay.dense(16, 16), patterns.random_blocks(1, 4, seed=n).dense(16, 16))


def test_memo_is_bounded_and_lets_evicted_masks_go():
    mbase.clear_plan_cache()
    first = masks.padding([3])
    ref = weakref.ref(first)
    mbase.tile_plan(first, 4, 4, 2)
    for n in range(mbase.PLAN_CACHE_SIZE + 5):
        mbase.tile_plan(masks.padding([n % 4]), 4, 4, 2)
    assert len(mbase._MEMO) <= mbase.PLAN_CACHE_SIZE
    del first
    gc.collect()
    assert ref() is None


def test_memo_bounds_the_bytes_of_mask_tensors_it_keeps_alive(monkeypatch):
    """Dense masks made afresh every call (a bool tensor passed as mask=) must not pile up."""
    mbase.clear_plan_cache()
    monkeypatch.setattr(mbase, "PLAN_CACHE_BYTES", 3 * 64 * 64)
    refs = []
    for n in range(6):
        m = masks.from_tensor(torch.rand(64, 64, generator=torch.Generator().manual_seed(n)) < 0.5)  # 4 KiB
        refs.append(weakref.ref(m))
        mbase.tile_plan(m, 64, 64, 16)
        del m
    gc.collect()
    assert sum(r() is not None for r in refs) <= 3 and refs[-1]() is not None
    assert mbase._MEMO_BYTES[0] <= 3 * 64 * 64


def test_blockwise_and_block_sparse_use_the_same_plan():
    mbase.clear_plan_cache()
    mask = patterns.sliding_window(40, causal=True)
    q = torch.randn(1, 2, 300, 8)
    for impl in ("blockwise", "block_sparse"):
        attnkit.attention(q, q, q, mask, impl=impl)
    plans = [entry[1] for (_, what), entry in mbase._MEMO.items() if what[0] == "blocks"]
    assert len(plans) == 1  # one classification of the mask, shared
    views = {key[0] for key in plans[0]._views}
    assert {"blockwise", "block_sparse"} <= views  # each implementation's schedule derives from it


# ------------------------------------------------------------------------------------------
# FlexAttention
# ------------------------------------------------------------------------------------------

try:
    from torch.nn.attention import flex_attention as flex
except ImportError:  # a torch without FlexAttention
    flex = None
needs_flex = pytest.mark.skipif(flex is None, reason="this torch has no torch.nn.attention.flex_attention")


def _flex_cases():
    return {
        "causal": masks.causal(),
        "causal_kv_cache": masks.causal(),  # T < S, bottom-right
        "window": masks.window(24, 3),
        "padding": masks.padding([200, 77]),
        "bigbird": patterns.bigbird(16, random_blocks=2),
    }


def _flex_attention(q, k, v, block_mask):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        return flex.flex_attention(q, k, v, block_mask=block_mask)


@needs_flex
@pytest.mark.parametrize("name", list(_flex_cases()))
def test_flex_attention_with_converted_block_mask_matches_reference(name):
    t, s = (120, 200) if name == "causal_kv_cache" else (200, 200)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) for n in (t, s, s))
    m = _flex_cases()[name]
    bm = m.blocks(t, s, 64)
    fbm = bm.to_flex()
    assert isinstance(fbm, flex.BlockMask) and fbm.BLOCK_SIZE == (64, 64) and fbm.seq_lengths == (t, s)
    ref = attnkit.attention(q, k, v, m, impl="reference")
    torch.testing.assert_close(_flex_attention(q, k, v, fbm), ref, atol=1e-5, rtol=1e-5)
    # the mask_mod is what create_block_mask accepts, and it finds the same non-empty tiles
    made = flex.create_block_mask(m.mask_mod(t, s), 2, None, t, s, device="cpu", BLOCK_SIZE=64)
    assert torch.equal(masks.from_flex(made).kinds != EMPTY, (bm.kinds != EMPTY).expand(2, 1, *bm.shape))


@needs_flex
@pytest.mark.parametrize("name", list(_flex_cases()))
def test_from_flex_round_trip_and_attention(name):
    t, s = (120, 200) if name == "causal_kv_cache" else (200, 200)
    m = _flex_cases()[name]
    bm = m.blocks(t, s, 32, 64)
    back = masks.from_flex(bm.to_flex())
    assert (back.lq, back.lk, back.block_q, back.block_k) == (t, s, 32, 64)
    assert torch.equal(back.kinds, bm.kinds)
    assert torch.equal(back.to_dense(), bm.to_dense())
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64) for n in (t, s, s))
    want = attnkit.attention(q, k, v, m, impl="reference")
    for impl in ("reference", "blockwise", "block_sparse"):
        got = attnkit.attention(q, k, v, back, impl=impl)  # a BlockMask is accepted as mask=
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=lambda msg, i=impl: f"{i}: {msg}")


@needs_flex
def test_from_flex_of_a_flex_made_mask_at_other_block_sizes():
    t = s = 150
    fbm = flex.create_block_mask(lambda b, h, i, j: (j <= i) & ((i - j) % 3 == 0), None, None, t, s,
                                 device="cpu", BLOCK_SIZE=32)
    fm = masks.from_flex(fbm).mask
    dense = fm.dense4(t, s)
    assert torch.equal(dense[0, 0], masks.from_mod(lambda b, h, i, j: (j <= i) & ((i - j) % 3 == 0)).dense(t, s))
    for bq, bk in ((16, 16), (48, 20), (32, 32), (64, 96)):
        kinds = mbase.tile_plan(fm, t, s, bq, bk).kinds
        exact = _kinds_from_dense(dense, bq, bk)
        assert ((kinds == exact) | (kinds == PARTIAL)).all()  # never wrong, at worst partial
        if bq % 32 == 0 and bk % 32 == 0:  # whole flex tiles: the same non-empty tiles
            assert torch.equal(kinds != EMPTY, exact != EMPTY)


def test_flex_conversion_errors(monkeypatch):
    with pytest.raises(AttnKitError, match="BlockMask"):
        masks.from_flex(torch.zeros(2, 2))
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)  # as if torch lacked it
    with pytest.raises(UnsupportedError, match="flex_attention"):
        masks.causal().blocks(8, 8, 4).to_flex()
