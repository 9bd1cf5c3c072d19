"""Numerics shared by the tile-based implementations (``blockwise``, ``block_sparse``) against the
``reference`` oracle: non-finite inputs, broadcast masks, empty queries, half precision, the
``(out, lse)`` contract of every implementation that returns the log-sum-exp, options and the
``impl="auto"`` cost model.

Policy for non-finite values: a NaN or infinity in an attended position makes that query row NaN
(as in PyTorch); a masked-out position never reaches the output or the gradients; nothing turns
into a silent zero.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import masks, scores
from attnkit.errors import AttnKitError
from attnkit.impls import _common
from attnkit.masks import patterns
from attnkit.registry import get_impl, list_impls
from conftest import runs_on_cpu

TILED = ["blockwise", "block_sparse"]
SMALL = {"blockwise": {"block_q": 8, "block_k": 8, "chunk_k": 16}, "block_sparse": {"block": 8}}


def _inputs(b, h, hkv, t, s, d, dv, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v)]


def _opts(impl, small):
    return SMALL.get(impl) if small else None


# ------------------------------------------------------------------------------------------
# NaN and infinity
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("small", [True, False], ids=["small_tiles", "default_tiles"])
@pytest.mark.parametrize("mask", [None, masks.causal()], ids=["none", "causal"])
def test_nan_query_gives_a_nan_row_and_a_nan_gradient(impl, small, mask):
    q, k, v = _inputs(1, 2, 2, 40, 40, 8, 8, torch.float32)
    q[0, 1, 13] = math.nan
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = attnkit.attention(q, k, v, mask, impl=impl, options=_opts(impl, small))
    assert out[0, 1, 13].isnan().all()
    rest = torch.ones(out.shape[:3], dtype=torch.bool)
    rest[0, 1, 13] = False
    assert torch.isfinite(out[rest]).all()
    out.sum().backward()
    assert q.grad[0, 1, 13].isnan().all()  # not a silent zero
    assert torch.isfinite(q.grad[rest]).all()


@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("small", [True, False], ids=["small_tiles", "default_tiles"])
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_key_poisons_exactly_the_rows_that_attend_it(impl, small, value):
    """Key 21 (inside a tile) is NaN / inf. With a causal mask rows >= 21 attend it (NaN scores:
    NaN rows, as the reference gives); rows < 21 must stay exact: the key is masked for them,
    whatever it holds."""
    q, k, v = _inputs(1, 2, 1, 48, 48, 8, 8)
    k[0, 0, 21] = value
    mask = masks.causal()
    got = attnkit.attention(q, k, v, mask, impl=impl, options=_opts(impl, small))
    ref = attnkit.attention(q, k, v, mask, impl="reference")
    assert torch.equal(got.isnan(), ref.isnan())
    assert got[:, :, 21:].isnan().any(-1).all() if math.isnan(value) else got.isnan().any()
    assert torch.isfinite(got[:, :, :21]).all()
    torch.testing.assert_close(got[:, :, :21], ref[:, :, :21], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("small", [True, False], ids=["small_tiles", "default_tiles"])
def test_non_finite_values_in_masked_positions_never_reach_anything(impl, small):
    """A query-dependent mask (not zeroed up front like key padding) that no query uses on keys 5
    and 30: their NaN / inf keys must not reach the output, dk or dv. (dq = dS K multiplies their
    zero weights by them, and 0 * NaN is NaN, in the reference too; likewise in the forward
    ``p @ v`` meets a masked non-finite *value*. Key-side masks avoid both: those keys and values
    are zeroed before any arithmetic.)"""
    t = 40
    allowed = masks.window(6).dense(t, t).clone()
    allowed[:, [5, 30]] = False
    q, k, v = _inputs(1, 2, 2, t, t, 8, 8)
    k[:, :, 5], k[:, :, 30] = math.nan, math.inf
    results = []
    for name in (impl, "reference"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = attnkit.attention(qq, kk, vv, allowed, impl=name, options=_opts(name, small))
        out.sum().backward()
        results.append((out.detach(), kk.grad, vv.grad, qq.grad))
    for what, a, r in zip(("out", "dk", "dv"), *results):
        assert torch.isfinite(a).all(), what
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10, msg=lambda m, w=what: f"{w}: {m}")
    torch.testing.assert_close(results[0][3], results[1][3], atol=1e-10, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("impl", TILED)
def test_nan_in_padded_keys_leaves_output_and_grads_clean(impl):
    q, k, v = _inputs(2, 4, 4, 512, 512, 16, 16, torch.float32)
    k[1, :, 300:], v[1, :, 300:] = math.nan, math.nan
    mask = masks.padding([512, 300])
    results = []
    for name in (impl, "reference"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = attnkit.attention(qq, kk, vv, mask, impl=name)
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * cot).sum().backward()
        results.append((out.detach(), qq.grad, kk.grad, vv.grad))
    for what, a, r in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.isfinite(a).all(), what
        torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4, msg=lambda m, w=what: f"{w}: {m}")


# ------------------------------------------------------------------------------------------
# shapes: broadcast masks, no queries
# ------------------------------------------------------------------------------------------

MASK_SHAPES = [(1, 1, 1, 50), (1, 1, 200, 1), (2, 1, 1, 50), (1, 3, 1, 50), (1, 1, 200, 50), (2, 3, 200, 50),
               (200, 50), (3, 200, 50), (1, 3, 200, 1)]


@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("small", [True, False], ids=["small_tiles", "default_tiles"])
def test_broadcast_bool_masks(impl, shape, small):
    q, k, v = _inputs(2, 3, 3, 200, 50, 8, 8)
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) < 0.6
    got = attnkit.attention(q, k, v, mask, impl=impl, options=_opts(impl, small))
    torch.testing.assert_close(got, attnkit.attention(q, k, v, mask, impl="reference"), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("mask", [None, masks.causal(), masks.padding([3, 5])], ids=["none", "causal", "padding"])
def test_no_queries_give_an_empty_result(impl, mask):
    q, k, v = _inputs(2, 4, 2, 0, 5, 8, 6)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out, lse = attnkit.attention(q, k, v, mask, impl=impl, return_lse=True)
    assert out.shape == (2, 4, 0, 6) and lse.shape == (2, 4, 0)
    out.sum().backward()
    assert q.grad.shape == q.shape and (k.grad == 0).all() and (v.grad == 0).all()


# ------------------------------------------------------------------------------------------
# half precision: scores computed and accumulated in float32
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("kw", [dict(mask=None), dict(mask=masks.causal()), dict(mask=None, score="cosine")],
                         ids=["none", "causal", "cosine"])
def test_large_half_inputs_keep_float32_scores(impl, dtype, kw):
    """``randn * 100`` with D = 64: q k^T reaches ~1e5, past float16's range; the error must stay
    within twice the reference's (which computes in float32 for half inputs)."""
    q, k, v = _inputs(1, 2, 2, 300, 300, 64, 64, dtype, scale=100.0)
    exact = attnkit.attention(*(x.double() for x in (q, k, v)), impl="reference", **kw)
    got = attnkit.attention(q, k, v, impl=impl, **kw)
    ref = attnkit.attention(q, k, v, impl="reference", **kw)
    assert got.dtype == dtype
    err, err_ref = (got.double() - exact).abs().max().item(), (ref.double() - exact).abs().max().item()
    assert err <= 2 * err_ref + 1e-3, f"{impl}: error {err:.3g}, reference in {dtype}: {err_ref:.3g}"


# ------------------------------------------------------------------------------------------
# the (out, lse) contract, for every implementation that returns the log-sum-exp
# ------------------------------------------------------------------------------------------

LSE_IMPLS = [n for n in list_impls() if get_impl(n).returns_lse and get_impl(n).exact and n != "reference"
             and runs_on_cpu(n)]


def _lse_cases(t, s):
    g = torch.Generator().manual_seed(4)
    return {
        "none": None,
        "causal": masks.causal(),
        "window_and_padding": masks.window(7, 0) & masks.padding([0, s - 2]),  # batch 0: every row dead
        "bigbird": patterns.bigbird(8, random_blocks=1),
        "dense": torch.rand(2, 1, t, s, generator=g) < 0.4,
    }


def _call(impl, *args, **kw):
    """``attention`` with the implementation's small-tile options (when it has them)."""
    return attnkit.attention(*args, impl=impl, options=SMALL.get(impl), **kw)


@pytest.mark.parametrize("impl", LSE_IMPLS)
@pytest.mark.parametrize("case", list(_lse_cases(4, 4)))
@pytest.mark.parametrize("shape", [(2, 4, 2, 37, 23, 8, 6), (2, 3, 1, 16, 41, 4, 4), (2, 2, 2, 9, 9, 8, 8)],
                         ids=["gqa", "mqa", "square"])
def test_lse_matches_reference_with_its_gradient(impl, case, shape):
    q, k, v = _inputs(*shape)
    t, s = shape[3], shape[4]
    mask = _lse_cases(t, s)[case]
    report = attnkit.explain_dispatch(q, k, v, mask, impl=impl, return_lse=True, options=SMALL.get(impl))
    if report.chosen is None:
        pytest.skip("; ".join(report.reasons[impl]))
    results = []
    for name in (impl, "reference"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out, lse = _call(name, qq, kk, vv, mask, return_lse=True)
        g = torch.Generator().manual_seed(9)
        cot_lse = torch.randn(lse.shape, generator=g, dtype=lse.dtype)
        ((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
         + (lse.masked_fill(torch.isinf(lse), 0) * cot_lse).sum()).backward()
        results.append((out.detach(), lse.detach(), qq.grad, kk.grad, vv.grad))
    (out, lse, *grads), (r_out, r_lse, *r_grads) = results
    assert lse.shape == shape[:2] + (t,) and lse.dtype == r_lse.dtype == torch.float64
    assert torch.equal(lse == -math.inf, r_lse == -math.inf)  # dead rows
    for what, a, r in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), (r_out, r_lse, *r_grads)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10, msg=lambda m, w=what: f"{w}: {m}")


@pytest.mark.parametrize("impl", LSE_IMPLS)
def test_lse_is_float32_for_half_and_float32_inputs(impl):
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = _inputs(1, 2, 2, 20, 20, 8, 8, dtype)
        _, lse = attnkit.attention(q, k, v, masks.causal(), impl=impl, return_lse=True)
        _, r_lse = attnkit.attention(q, k, v, masks.causal(), impl="reference", return_lse=True)
        assert lse.dtype == torch.float32
        torch.testing.assert_close(lse, r_lse, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-3)


def _halves(mask_fn, t, s):
    """Masks of the first and second half of the keys, from a predicate on absolute positions."""
    half = s // 2
    first = masks.from_mod(lambda b, h, i, j: mask_fn(i, j))
    second = masks.from_mod(lambda b, h, i, j: mask_fn(i, j + half))
    return half, first, second


@pytest.mark.parametrize("impl", LSE_IMPLS)
@pytest.mark.parametrize("pattern", ["all", "causal", "band"])
def test_merge_partials_of_two_key_halves_equals_attention_over_all_keys(impl, pattern):
    """Forward and gradients: attention over keys [0, S/2) and [S/2, S) merged with
    ``merge_partials`` equals attention over all keys (rows dead in one half included)."""
    fn = {"all": lambda i, j: torch.ones_like(i + j, dtype=torch.bool), "causal": lambda i, j: j <= i,
          "band": lambda i, j: (j - i).abs() <= 5}[pattern]
    t, s = 27, 34
    q, k, v = _inputs(2, 4, 2, t, s, 8, 8)
    half, first, second = _halves(fn, t, s)
    whole = masks.from_mod(lambda b, h, i, j: fn(i, j))
    grads = []
    for merged in (True, False):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        if merged:
            a = _call(impl, qq, kk[:, :, :half], vv[:, :, :half], first, return_lse=True)
            b = _call(impl, qq, kk[:, :, half:], vv[:, :, half:], second, return_lse=True)
            out, lse = attnkit.merge_partials([a, b])
        else:
            out, lse = _call(impl, qq, kk, vv, whole, return_lse=True)
        g = torch.Generator().manual_seed(3)
        cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
        cot_lse = torch.randn(lse.shape, generator=g, dtype=lse.dtype).masked_fill(torch.isinf(lse), 0)
        ((out * cot).sum() + (lse.masked_fill(torch.isinf(lse), 0) * cot_lse).sum()).backward()
        grads.append((out.detach(), lse.detach(), qq.grad, kk.grad, vv.grad))
    for what, a, r in zip(("out", "lse", "dq", "dk", "dv"), *grads):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10, msg=lambda m, w=what: f"{w}: {m}")


# ------------------------------------------------------------------------------------------
# options declared as data, shared helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", TILED)
def test_options_are_declared_and_bad_values_name_the_option(impl):
    module = {"blockwise": attnkit.impls.blockwise, "block_sparse": attnkit.impls.block_sparse}[impl]
    assert get_impl(impl).options == frozenset(module.OPTIONS)
    q, k, v = _inputs(1, 2, 2, 16, 16, 8, 8)
    ints = [name for name, opt in module.OPTIONS.items() if opt.kind is int]
    assert ints
    for name in ints:
        for bad in (0, -1, 1.5, True, "8"):
            with pytest.raises(AttnKitError, match=name):
                attnkit.attention(q, k, v, masks.causal(), impl=impl, options={name: bad})
        attnkit.attention(q, k, v, masks.causal(), impl=impl, options={name: 5})  # a good value runs


def test_holds_grad_tensor_finds_learned_tensors_in_closures():
    learned = torch.zeros(4, 4, requires_grad=True)
    assert _common.holds_grad_tensor((scores.bias(learned),))
    assert not _common.holds_grad_tensor((scores.bias(learned.detach()), scores.softcap(2.0)))

    def make_empty_cell_mod():
        def fn(s, b, h, i, j, lq, lk):
            return s + later  # a closure cell, still empty when inspected

        mod = scores.ScoreMod("empty_cell", fn)
        later = 0.0
        return mod, fn.__closure__[0]

    mod, cell = make_empty_cell_mod()
    del cell.cell_contents  # an empty cell raises ValueError when read
    assert not _common.holds_grad_tensor((mod,))



# ------------------------------------------------------------------------------------------
# impl="auto": the cost model (decisions only, never timings)
# ------------------------------------------------------------------------------------------


def _decide(t, dtype, mask, impls=("block_sparse", "blockwise", "sdpa", "reference"), **kw):
    q = torch.randn(1, 4, t, 64).to(dtype)
    with attnkit.use_impl(list(impls)):
        return attnkit.explain_dispatch(q, q, q, mask, **kw)


@pytest.mark.parametrize("dtype,t", [(torch.bfloat16, 256), (torch.float32, 256), (torch.float16, 64)],
                         ids=["bf16", "f32", "f16"])
def test_auto_leaves_small_masked_calls_to_sdpa(dtype, t):
    """Per dtype: bfloat16 and float32 below 512 x 512 pairs, float16 (computed in float32 here,
    while sdpa's float16 CPU matmuls are slow) only below 128 x 128."""
    for mask in (masks.window(t // 4), masks.causal() & masks.window(t // 4 - 1, 0), masks.padding([t - 56])):
        report = _decide(t, dtype, mask)
        assert report.chosen == "sdpa", str(report)
        assert "small problem" in " ".join(report.reasons["blockwise"])
    if dtype == torch.float16:
        assert _decide(256, dtype, masks.window(64)).chosen == "blockwise"


def test_auto_uses_blockwise_where_it_pays_and_explains_the_rest():
    mine = ("blockwise", "sdpa", "reference")
    assert _decide(512, torch.float32, masks.window(64)).chosen == "blockwise"
    assert _decide(4096, torch.bfloat16, masks.window(64), mine, score_mods=(scores.softcap(5.0),)).chosen \
        == "blockwise"
    fused = _decide(1024, torch.float32, masks.causal())
    assert fused.chosen == "sdpa" and "fused" in " ".join(fused.reasons["blockwise"])
    assert _decide(8192, torch.float32, patterns.sliding_window(128, causal=True)).chosen == "block_sparse"


def test_auto_leaves_masks_with_few_empty_tiles_to_sdpa_except_in_float16():
    """Padding that keeps 15 of 16 key tiles: little to skip, sdpa with a dense mask wins; in
    float16, where sdpa's CPU matmuls are slow and blockwise computes in float32, it does not."""
    mine = ("blockwise", "sdpa", "reference")
    mask = masks.padding([1024 - 64])
    dense = _decide(1024, torch.float32, mask, mine)
    assert dense.chosen == "sdpa" and "few tiles to skip" in " ".join(dense.reasons["blockwise"])
    assert _decide(1024, torch.bfloat16, mask, mine).chosen == "sdpa"
    assert _decide(1024, torch.float16, mask, mine).chosen == "blockwise"
    assert _decide(1024, torch.float32, masks.random(0.5), mine).chosen == "sdpa"
    # sdpa cannot run it (soft-capping): the dense-mask rule does not apply
    assert _decide(1024, torch.float32, mask, mine, score_mods=(scores.softcap(5.0),)).chosen == "blockwise"
    assert _decide(1024, torch.float32, mask, mine, return_lse=True).chosen == "blockwise"


def test_refusal_reasons_state_rules_not_paths_or_timings():
    reports = [_decide(t, dtype, mask) for t in (64, 256, 1024) for dtype in (torch.float32, torch.bfloat16)
               for mask in (None, masks.causal(), masks.window(8), masks.random(0.5))]
    for report in reports:
        for impl in TILED:
            for reason in report.reasons[impl]:
                assert "benchmarks/" not in reason and ".json" not in reason, reason
                assert not any(f"{x}x" in reason for x in range(1, 10)), reason  # no "1.35-1.6x" speed ratios
