"""The ``blockwise`` implementation against the ``reference`` oracle, forward and backward.

Tolerances: float64 1e-10 (atol and rtol) on outputs and gradients; float32 2e-5 on outputs
and 1e-4 on gradients (rtol 1e-5); bfloat16 by the ratio rule: the error of blockwise in
bf16 is at most twice the error of the reference run in bf16 plus 1e-2, both measured
against the float64 reference.

Small block sizes (8 x 8 tiles, 16-key chunks) are used so that every case crosses many tiles,
including ragged last tiles, full tiles, partial tiles and skipped tiles.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks, scores
from attnkit.errors import AttnKitError
from attnkit.eval.bench import peak_memory
from attnkit.impls.blockwise import plan_blocks

SMALL = {"block_q": 8, "block_k": 8, "chunk_k": 16}


def _inputs(b, h, hkv, t, s, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v)]


def _run(impl, q, k, v, mask=None, **kw):
    """Output and the gradients of sum(out * cotangent) with respect to q, k, v."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = attnkit.attention(q, k, v, mask, impl=impl, **kw)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out * cot.to(out.dtype)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _assert_matches(got, ref, dtype, what=""):
    names = ("out", "dq", "dk", "dv")
    for name, a, r in zip(names, got, ref):
        assert torch.isfinite(a).all(), f"{what} {name}: non-finite values"
        if dtype == torch.float64:
            torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{what} {n}: {m}")
        else:
            tol = 2e-5 if name == "out" else 1e-4
            torch.testing.assert_close(a.double(), r.double(), atol=tol, rtol=1e-5,
                                       msg=lambda m, n=name: f"{what} {n}: {m}")


def _mask_cases(b, t, s):
    g = torch.Generator().manual_seed(t * 7 + s)
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    lengths[0] = 0
    return {
        "none": None,
        "causal": masks.causal(),
        "causal_top_left": masks.causal("top_left"),
        "window": masks.window(5),
        "causal_window": masks.causal() & masks.window(9, 0),
        "dilated": masks.dilated(3, 2),
        "global_local": masks.global_tokens([0, 5]) | masks.window(2),
        "random": masks.random(0.5, seed=1),
        "block_sparse": masks.block_sparse(torch.rand(math.ceil(t / 8), math.ceil(s / 8), generator=g) < 0.5, 8),
        "padding": masks.padding(lengths),
        "key_padding": masks.from_key_padding(torch.rand(b, s, generator=g) < 0.6),
        "dense_tensor": torch.rand(b, 1, t, s, generator=g) < 0.5,
        "causal_and_padding": masks.causal() & masks.padding(lengths),
        "not_window": ~masks.window(4),
        "from_mod": masks.from_mod(lambda b, h, i, j: (i + j) % 3 != 0),
    }


# shapes: B, H, Hkv, T, S, D, Dv (T, S not multiples of the 8-row tiles; T != S; GQA)
SHAPES = {"square": (2, 2, 2, 29, 29, 16, 16), "gqa_long_s": (2, 4, 2, 19, 45, 8, 12),
          "long_t": (1, 2, 1, 41, 13, 8, 8)}


@pytest.mark.parametrize("mask_name", list(_mask_cases(2, 8, 8)))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_reference_over_masks(mask_name, shape_name, dtype):
    b, h, hkv, t, s, d, dv = SHAPES[shape_name]
    mask = _mask_cases(b, t, s)[mask_name]
    q, k, v = _inputs(b, h, hkv, t, s, d, dv, dtype)
    got = _run("blockwise", q, k, v, mask, options=SMALL)
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask)
    _assert_matches(got, ref, dtype, f"{mask_name}/{shape_name}")


@pytest.mark.parametrize("mod_name", ["bias", "alibi", "softcap", "alibi+softcap"])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "random"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_reference_with_score_mods(mod_name, mask_name, dtype):
    b, h, hkv, t, s, d, dv = SHAPES["gqa_long_s"]
    mask = _mask_cases(b, t, s)[mask_name]
    q, k, v = _inputs(b, h, hkv, t, s, d, dv, dtype)
    bias = torch.randn(h, t, s, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mods = {"bias": (scores.bias(bias),), "alibi": (scores.alibi(h),), "softcap": (scores.softcap(1.5),),
            "alibi+softcap": (scores.alibi(h), scores.softcap(1.5))}[mod_name]
    got = _run("blockwise", q, k, v, mask, score_mods=mods, options=SMALL)
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask, score_mods=mods)
    _assert_matches(got, ref, dtype, mod_name)


@pytest.mark.parametrize("kw", [dict(score="dot"), dict(score="cosine"), dict(score=scores.cosine(0.1)),
                                dict(scale=0.37), dict(weight="sigmoid"),
                                dict(weight="sigmoid", score_mods=(scores.softcap(3.0),))],
                         ids=["dot", "cosine", "cosine_t0.1", "scale", "sigmoid", "sigmoid_softcap"])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding"])
def test_scores_scale_and_sigmoid_weights(kw, mask_name):
    b, h, hkv, t, s, d, dv = SHAPES["gqa_long_s"]
    mask = _mask_cases(b, t, s)[mask_name]
    q, k, v = _inputs(b, h, hkv, t, s, d, dv, torch.float64)
    _assert_matches(_run("blockwise", q, k, v, mask, options=SMALL, **kw),
                    _run("reference", q, k, v, mask, **kw), torch.float64, str(kw))


@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "dense_tensor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_low_precision_ratio_rule(mask_name, dtype):
    b, h, hkv, t, s, d, dv = SHAPES["gqa_long_s"]
    mask = _mask_cases(b, t, s)[mask_name]
    q, k, v = _inputs(b, h, hkv, t, s, d, dv, dtype)
    got = _run("blockwise", q, k, v, mask, options=SMALL)
    low = _run("reference", q, k, v, mask)
    ref = _run("reference", *(x.double() for x in (q, k, v)), mask)
    for name, a, lo, r in zip(("out", "dq", "dk", "dv"), got, low, ref):
        assert a.dtype == dtype
        err, err_ref = (a.double() - r).abs().max().item(), (lo.double() - r).abs().max().item()
        assert err <= 2 * err_ref + 1e-2, f"{name}: blockwise err {err:.3g} vs reference-in-{dtype} {err_ref:.3g}"


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), hkv=st.integers(1, 2), rep=st.integers(1, 3), t=st.integers(1, 40),
       s=st.integers(1, 40), d=st.sampled_from([4, 8]), block_q=st.integers(1, 16), block_k=st.integers(1, 16),
       chunk_k=st.integers(1, 48), mask_kind=st.sampled_from(["none", "causal", "window", "random", "padding"]),
       seed=st.integers(0, 1000))
def test_property_any_shape_and_block_sizes(b, hkv, rep, t, s, d, block_q, block_k, chunk_k, mask_kind, seed):
    mask = {"none": None, "causal": masks.causal(), "window": masks.window(3, 1),
            "random": masks.random(0.3, seed=seed),
            "padding": masks.padding(torch.randint(0, s + 1, (b,), generator=torch.Generator().manual_seed(seed)))
            }[mask_kind]
    q, k, v = _inputs(b, hkv * rep, hkv, t, s, d, d, torch.float64, seed=seed)
    opts = {"block_q": block_q, "block_k": block_k, "chunk_k": chunk_k}
    _assert_matches(_run("blockwise", q, k, v, mask, options=opts), _run("reference", q, k, v, mask),
                    torch.float64, f"{mask_kind} blocks {opts}")


def test_default_block_sizes_match_reference():
    q, k, v = _inputs(1, 2, 1, 600, 700, 16, 16, torch.float32)
    for mask in (None, masks.causal(), masks.window(100), masks.random(0.5)):
        _assert_matches(_run("blockwise", q, k, v, mask), _run("reference", *(x.double() for x in (q, k, v)), mask),
                        torch.float32, repr(mask))


def test_fully_masked_rows_give_zero_output_and_zero_grad():
    q, k, v = _inputs(2, 2, 2, 20, 12, 8, 8, torch.float32)
    # causal with T > S (bottom-right): the first 8 rows see no key; batch 0 has every key padded
    mask = masks.causal() & masks.padding([0, 12])
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = attnkit.attention(q, k, v, mask, impl="blockwise", options=SMALL)
    out.sum().backward()
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    assert (out[0] == 0).all() and (out[1, :, :8] == 0).all()
    assert (q.grad[0] == 0).all() and (q.grad[1, :, :8] == 0).all()
    assert (k.grad[0] == 0).all() and (v.grad[0] == 0).all()
    assert (out[1, :, 8:] != 0).any()


def test_returned_weights_and_their_gradient_match_reference():
    q, k, v = _inputs(2, 4, 2, 19, 23, 8, 8, torch.float64)
    mask = masks.causal() & masks.padding([0, 15])
    results = []
    for impl in ("blockwise", "reference"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out, w = attnkit.attention(qq, kk, vv, mask, impl=impl, return_weights=True, options=SMALL
                                   if impl == "blockwise" else None, score_mods=(scores.softcap(2.0),))
        g = torch.Generator().manual_seed(5)
        ((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
         + (w * torch.randn(w.shape, generator=g, dtype=w.dtype)).sum()).backward()
        results.append((out, w, qq.grad, kk.grad, vv.grad))
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
    assert (results[0][1][0] == 0).all()


def test_plan_skips_empty_tiles_and_masks_only_partial_ones():
    plan = plan_blocks(64, 64, masks.causal(), block_q=16, block_k=16, chunk_k=64)
    # 4 x 4 tiles: 6 empty above the diagonal are skipped, 6 full below it run unmasked
    assert plan.tiles_visited() == 10
    for qi, row in enumerate(plan.rows):
        assert row[-1] == (qi * 16, qi * 16 + 16, True)  # the diagonal tile, masked
        assert all(not masked for _, _, masked in row[:-1])
        assert all(j1 <= (qi + 1) * 16 for _, j1, _ in row)
    win = plan_blocks(128, 128, masks.window(8), block_q=16, block_k=16)
    assert win.tiles_visited() == 8 + 2 * 7  # the diagonal band of tiles only
    full = plan_blocks(50, 70, None, block_q=16, block_k=16, chunk_k=32)
    assert [c for c in full.rows[0]] == [(0, 32, False), (32, 64, False), (64, 70, False)]


@pytest.mark.parametrize("mask", [masks.causal(), masks.window(100, 20), masks.causal() & masks.padding([300, 90]),
                                  masks.random(0.01, seed=2)], ids=["causal", "window", "causal_padding", "random"])
def test_steps_of_two_tile_rows_equal_a_plan_with_taller_tiles(mask):
    """The default schedule steps 2 * DEFAULT_BLOCK query rows over the shared DEFAULT_BLOCK tile
    plan; it must equal the chunks of a plan classified with tiles that tall."""
    from attnkit.impls.blockwise import plan as bw
    from attnkit.masks.base import DEFAULT_BLOCK

    lq, lk = 333, 300
    plan = plan_blocks(lq, lk, mask, block_q=2 * DEFAULT_BLOCK, block_k=DEFAULT_BLOCK, chunk_k=256)
    assert (plan.blocks.block_q, plan.blocks.block_k) == (DEFAULT_BLOCK, DEFAULT_BLOCK)  # the shared tiles
    tall = bw._rows(mask.blocks(lq, lk, 2 * DEFAULT_BLOCK, DEFAULT_BLOCK), 1, 256)
    assert plan.rows == tall.rows and plan.tiles_visited() == tall.tiles


def test_tiles_outside_the_mask_are_never_computed():
    """Keys in skipped tiles cannot influence anything: make them NaN and the result stays exact."""
    q, k, v = _inputs(1, 2, 2, 64, 64, 8, 8, torch.float64)
    k[:, :, 32:], v[:, :, 32:] = float("nan"), float("nan")
    # query rows 0..31 with a top-left causal mask never reach keys 32..63: those tiles are empty
    out = attnkit.attention(q[:, :, :32], k, v, masks.causal("top_left"), impl="blockwise", options=SMALL)
    ref = attnkit.attention(q[:, :, :32], k[:, :, :32], v[:, :, :32], masks.causal("top_left"), impl="reference")
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_bad_options_and_unsupported_calls_are_explained():
    q, k, v = _inputs(1, 2, 2, 8, 8, 8, 8, torch.float32)
    with pytest.raises(AttnKitError, match="block_q"):
        attnkit.attention(q, k, v, impl="blockwise", options={"block_q": 0})
    with pytest.raises(attnkit.UnsupportedError, match="dropout"):
        attnkit.attention(q, k, v, impl="blockwise", dropout_p=0.1)
    with pytest.raises(attnkit.UnsupportedError, match="weight 'sparsemax'"):
        attnkit.attention(q, k, v, impl="blockwise", weight="sparsemax")
    learned = torch.zeros(8, 8, requires_grad=True)
    report = attnkit.explain_dispatch(q, k, v, bias=learned, impl="blockwise")
    assert report.chosen is None and "requires grad" in str(report)


# ------------------------------------------------------------------------------------------
# memory: the backward never holds a T x S buffer
# ------------------------------------------------------------------------------------------

MEM_T, MEM_H, MEM_D = 4096, 4, 32
SCORE_MATRIX_MIB = MEM_H * MEM_T * MEM_T * 4 / 2**20  # one fp32 (H, T, S) buffer: 256 MiB
MEM_BOUND_MIB = 96.0


def memory_probe(impl: str, t: int, heads: int, head_dim: int):
    """Builds inputs; returns a callable running forward + backward (for ``peak_memory``)."""
    torch.set_num_threads(1)
    q, k, v = (torch.randn(1, heads, t, head_dim, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, heads, t, head_dim)
    torch.zeros(64 * 2**20, dtype=torch.uint8).fill_(1)  # touch the allocator's first arenas

    def run():
        attnkit.attention(q, k, v, masks.causal(), impl=impl).backward(grad)

    return run


def test_backward_memory_stays_far_below_a_score_matrix():
    res = peak_memory("test_blockwise:memory_probe",
                      {"impl": "blockwise", "t": MEM_T, "heads": MEM_H, "head_dim": MEM_D},
                      extra_path=[str(Path(__file__).parent), *sys.path])
    assert res is not None, "memory probe failed"
    assert MEM_BOUND_MIB < SCORE_MATRIX_MIB / 2
    assert res["peak_extra_mib"] < MEM_BOUND_MIB, (
        f"blockwise fwd+bwd at T=S={MEM_T} used {res['peak_extra_mib']:.0f} MiB extra; bound {MEM_BOUND_MIB} MiB "
        f"(one score matrix is {SCORE_MATRIX_MIB:.0f} MiB)")


# ------------------------------------------------------------------------------------------
# impl="auto": the measured cost model
# ------------------------------------------------------------------------------------------


def test_auto_prefers_blockwise_where_sdpa_needs_a_dense_mask_and_explains_otherwise():
    q = torch.randn(1, 2, 512, 16)
    with attnkit.use_impls(["blockwise", "sdpa", "reference"]):
        assert attnkit.explain_dispatch(q, q, q, masks.window(64)).chosen == "blockwise"
        assert attnkit.explain_dispatch(q, q, q, masks.causal(), score_mods=(scores.softcap(5.0),)).chosen \
            == "blockwise"
        fused = attnkit.explain_dispatch(q, q, q, masks.causal())
        assert fused.chosen == "sdpa" and "faster" in " ".join(fused.reasons["blockwise"])
        arbitrary = attnkit.explain_dispatch(q, q, q, masks.random(0.5))
        assert arbitrary.chosen == "sdpa" and "few tiles to skip" in " ".join(arbitrary.reasons["blockwise"])
        small = attnkit.explain_dispatch(q[:, :, :32], q[:, :, :32], q[:, :, :32], masks.window(4))
        assert small.chosen == "sdpa" and "small problem" in " ".join(small.reasons["blockwise"])
    # naming the implementation bypasses the cost model
    assert attnkit.explain_dispatch(q, q, q, masks.causal(), impl="blockwise").chosen == "blockwise"
