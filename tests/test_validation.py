"""Bad arguments to the mask and score constructors, and masks or score modifiers that do not fit
a call: each is refused with an AttnKitError naming what it got and what was expected, instead of
an empty mask, a silently truncated value or an IndexError from inside an implementation."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import masks, scores
from attnkit.errors import AttnKitError, DTypeError, ShapeError
from attnkit.masks import GlobalTokens, Padding, Random, Window


def qkv(b=2, h=8, hkv=8, t=16, s=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g, dtype=torch.float64),
            torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64),
            torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# global tokens
# ----------------------------------------------------------------------------------------------


def test_global_tokens_out_of_range_is_refused_for_the_call():
    q, k, v = qkv()
    with pytest.raises(ShapeError, match=r"global_tokens indices \[100\] are out of range .* 0 \.\. 15"):
        attnkit.attention(q, k, v, masks.global_tokens([0, 100]), impl="reference")
    with pytest.raises(ShapeError, match=r"\[16\]"):  # inside a composition too
        attnkit.attention(q, k, v, masks.window(2) | masks.global_tokens([16]), impl="reference")
    with pytest.raises(ShapeError, match=r"\[16\]"):
        masks.global_tokens([16]).validate(16, 16, 1, 1)


def test_global_tokens_in_range_for_queries_past_the_keys():
    """top_left with lq > lk: positions lk .. lq-1 are query rows, valid global tokens."""
    m = masks.global_tokens([18], align="top_left")
    m.validate(20, 16, 1, 1)
    d = m.dense(20, 16)
    assert d[18].all() and int(d.sum()) == 16
    with pytest.raises(ShapeError, match=r"0 \.\. 15"):
        masks.global_tokens([18]).validate(20, 16, 1, 1)  # bottom_right: query 19 sits at key 15


@pytest.mark.parametrize("indices,error,match", [
    ([-1], AttnKitError, r"indices must be >= 0.*\[-1\]"),
    ([3, -2], AttnKitError, r"indices must be >= 0"),
    ([1.5], DTypeError, r"indices must be integers; got torch.float"),
    ([True], DTypeError, r"indices must be integers; got torch.bool"),
    ([[0, 1], [2, 3]], ShapeError, r"indices must be 1-D \(G,\); got shape \(2, 2\)"),
    ("ab", AttnKitError, r"indices must be a sequence of ints"),
])
def test_global_tokens_bad_indices(indices, error, match):
    with pytest.raises(error, match=match):
        masks.global_tokens(indices)


def test_global_tokens_class_checks_its_indices():
    with pytest.raises(AttnKitError, match="must be >= 0"):
        GlobalTokens(torch.tensor([-3]))
    assert GlobalTokens(torch.tensor([1], dtype=torch.int32)).indices.dtype == torch.int64
    assert torch.equal(masks.global_tokens(2).dense(4, 4), masks.global_tokens([2]).dense(4, 4))


# ----------------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("left,right", [
    (1.5, None), (2, 0.5), (True, None), (2, False), (-1, None), (2, -3), (math.nan, None),
    (-math.inf, None), ("3", None), (None, 2),
])
def test_window_sizes_are_whole_and_non_negative(left, right):
    with pytest.raises(AttnKitError, match=r"window (left|right) must be an int >= 0 or math.inf; got"):
        masks.window(left, right)


def test_window_accepts_ints_whole_floats_and_inf():
    assert torch.equal(masks.window(2.0).dense(6, 6), masks.window(2).dense(6, 6))
    assert masks.window(2.0).left == 2 and isinstance(masks.window(2.0).left, int)
    assert torch.equal(masks.window(math.inf, 0).dense(5, 5), masks.causal().dense(5, 5))
    assert torch.equal(masks.window(torch.tensor(1)).dense(4, 4), masks.window(1).dense(4, 4))
    with pytest.raises(AttnKitError, match="window left"):
        Window(1.5, 1)


@pytest.mark.parametrize("window,dilation,kw,match", [
    (2.5, 2, {}, r"dilated window must be an int >= 0 or math.inf; got 2.5"),
    (-1, 2, {}, r"dilated window must be an int >= 0"),
    (math.nan, 2, {}, r"dilated window must be an int >= 0"),
    (True, 2, {}, r"dilated window"),
    (2, 0, {}, r"dilated dilation must be an int >= 1; got 0"),
    (2, 1.5, {}, r"dilated dilation must be an int >= 1; got 1.5"),
    (2, True, {}, r"dilated dilation"),
    (2, math.inf, {}, r"dilated dilation"),
    (2, 2, {"causal": "yes"}, r"dilated causal must be True or False"),
])
def test_dilated_bad_arguments(window, dilation, kw, match):
    with pytest.raises(AttnKitError, match=match):
        masks.dilated(window, dilation, **kw)


# ----------------------------------------------------------------------------------------------
# data masks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("density,seed,match", [
    (math.nan, 0, r"density must be a number in \[0, 1\]; got nan"),
    (True, 0, r"density must be a number in \[0, 1\]; got True"),
    ("0.5", 0, r"density must be a number in \[0, 1\]; got '0.5'"),
    (math.inf, 0, r"density"),
    (-0.1, 0, r"density"),
    (0.5, 1.5, r"random mask seed must be an int; got 1.5"),
    (0.5, True, r"random mask seed must be an int; got True"),
    (0.5, "1", r"random mask seed must be an int"),
])
def test_random_bad_arguments(density, seed, match):
    with pytest.raises(AttnKitError, match=match):
        masks.random(density, seed)


def test_random_accepts_numbers():
    assert masks.random(1).density == 1.0 and Random(0.25, 3).seed == 3
    assert not masks.random(0).dense(3, 3).any()


@pytest.mark.parametrize("lengths,error,match", [
    ([3.0, 2.0], DTypeError, r"padding lengths must be integers.*got torch.float"),
    ([True, False], DTypeError, r"padding lengths must be integers.*got torch.bool"),
    (torch.tensor([2.5]), DTypeError, r"padding lengths must be integers"),
    ([[1, 2]], ShapeError, r"1-D integer sequence \(B,\).*got shape \(1, 2\)"),
    ([], ShapeError, r"B >= 1; got shape \(0,\)"),
    (3, ShapeError, r"got shape \(\)"),
    ([4, -1], AttnKitError, r"padding lengths must be >= 0; got \[4, -1\]"),
    ("ab", AttnKitError, r"padding lengths must be a 1-D integer sequence"),
    (None, AttnKitError, r"padding lengths must be a 1-D integer sequence"),
])
def test_padding_bad_lengths(lengths, error, match):
    with pytest.raises(error, match=match):
        masks.padding(lengths)


def test_padding_class_checks_its_lengths():
    with pytest.raises(DTypeError, match="integers"):
        Padding(torch.tensor([1.5]))
    with pytest.raises(AttnKitError, match=">= 0"):
        Padding(torch.tensor([-1]))
    assert Padding(torch.tensor([2], dtype=torch.int32)).lengths.dtype == torch.int64


@pytest.mark.parametrize("keep,error,match", [
    (torch.ones(2, 5), DTypeError, r"bool tensor of shape \(B, S\); got dtype torch.float32"),
    (torch.ones(2, 5, dtype=torch.int64), DTypeError, r"got dtype torch.int64 \(.*keep.bool\(\)\)"),
    (torch.ones(5, dtype=torch.bool), ShapeError, r"got shape \(5,\)"),
    (torch.ones(2, 1, 5, dtype=torch.bool), ShapeError, r"got shape \(2, 1, 5\)"),
    ([[True, False]], DTypeError, r"bool tensor of shape \(B, S\); got list"),
])
def test_from_key_padding_bad_masks(keep, error, match):
    with pytest.raises(error, match=match):
        masks.from_key_padding(keep)


def test_from_key_padding_bad_convention():
    with pytest.raises(AttnKitError, match="true_means must be 'attend' or 'ignore'; got True"):
        masks.from_key_padding(torch.ones(2, 5, dtype=torch.bool), true_means=True)


@pytest.mark.parametrize("block_size", [1.5, True, 0, (2, 0), (2, 2.5)])
def test_block_sparse_bad_block_size(block_size):
    with pytest.raises(AttnKitError, match="block_sparse block_size must be an int >= 1"):
        masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), block_size)


# ----------------------------------------------------------------------------------------------
# score modifiers that must fit the call
# ----------------------------------------------------------------------------------------------


def test_alibi_slopes_must_match_the_heads():
    with pytest.raises(ShapeError, match="score modifier 'alibi': has 4 slopes but the call has 8 query heads"):
        scores.alibi(4).validate(2, 8, 16, 16)
    scores.alibi(8).validate(2, 8, 16, 16)
    q, k, v = qkv(h=8, hkv=2)
    with pytest.raises(ShapeError, match="has 4 slopes but the call has 8 query heads"):
        attnkit.attention(q, k, v, score_mods=[scores.alibi(4)], impl="reference")
    out = attnkit.attention(q, k, v, score_mods=[scores.alibi(8)], impl="reference")  # GQA: slopes per query head
    assert torch.isfinite(out).all()


def test_score_mods_must_be_a_list():
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match="score_mods"):
        attnkit.attention(q, k, v, score_mods=scores.alibi(8), impl="reference")


def test_bias_mod_must_broadcast_to_the_call():
    with pytest.raises(ShapeError, match=r"bias of shape \(5,\) is not broadcastable to \(B, H, T, S\) = \(2, 4, 3, 6"):
        scores.bias(torch.zeros(5)).validate(2, 4, 3, 6)
    scores.bias(torch.zeros(4, 1, 6)).validate(2, 4, 3, 6)
    q, k, v = qkv()
    with pytest.raises(ShapeError, match="not broadcastable"):
        attnkit.attention(q, k, v, score_mods=[scores.bias(torch.zeros(3, 16))], impl="reference")


@pytest.mark.parametrize("slopes,error,match", [
    (True, AttnKitError, r"alibi slopes must be a head count or a \(H,\) sequence"),
    ([[0.5, 0.25]], ShapeError, r"alibi slopes must be 1-D \(H,\)"),
    ([], ShapeError, r"alibi slopes must be 1-D \(H,\)"),
    ([0.5, math.nan], AttnKitError, r"alibi slopes must be finite"),
    ("ab", AttnKitError, r"alibi slopes must be a head count"),
    (0, AttnKitError, r"num_heads must be an int >= 1; got 0"),
])
def test_alibi_bad_slopes(slopes, error, match):
    with pytest.raises(error, match=match):
        scores.alibi(slopes)


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -1.0, 0, True, "1"])
def test_cosine_temperature(temperature):
    with pytest.raises(AttnKitError, match=r"cosine temperature must be a finite number > 0; got"):
        scores.cosine(temperature)


@pytest.mark.parametrize("cap", [0, -2.0, math.nan, math.inf, True, None])
def test_softcap_cap(cap):
    with pytest.raises(AttnKitError, match=r"softcap cap must be a finite number > 0; got"):
        scores.softcap(cap)


def test_softcap_and_cosine_accept_ints():
    assert scores.cosine(2).params["temperature"] == 2.0
    s = torch.tensor([[[[100.0, -100.0]]]])
    torch.testing.assert_close(scores.softcap(5)(s, *(torch.zeros(1, dtype=torch.long),) * 4, 1, 2),
                               5 * torch.tanh(s / 5))


# ----------------------------------------------------------------------------------------------
# bias: any shape broadcastable to (B, H, T, S)
# ----------------------------------------------------------------------------------------------


def test_one_dimensional_bias_is_a_per_key_bias():
    q, k, v = qkv(t=5, s=7)
    b = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = attnkit.attention(q, k, v, bias=b.view(1, 1, 1, 7), impl="reference")
    torch.testing.assert_close(attnkit.attention(q, k, v, bias=b, impl="reference"), want, atol=0, rtol=0)
    torch.testing.assert_close(attnkit.attention(q, k, v, score_mods=[scores.bias(b)], impl="reference"), want,
                               atol=0, rtol=0)
    assert not torch.allclose(want, attnkit.attention(q, k, v, impl="reference"))  # the bias mattered


def test_bias_rank_limits():
    with pytest.raises(ShapeError, match=r"bias must be 1-D to 4-D.*got shape \(\)"):
        scores.bias(torch.tensor(1.0))
    with pytest.raises(ShapeError, match=r"bias must be 1-D to 4-D.*got shape \(1, 1, 1, 1, 3\)"):
        scores.bias(torch.zeros(1, 1, 1, 1, 3))
