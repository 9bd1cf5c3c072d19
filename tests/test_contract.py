"""The implementation contract: ``return_lse``, :func:`attnkit.merge_partials`, the result type."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, ShapeError
from conftest import runs_on_cpu

LSE_IMPLS = [n for n in attnkit.list_impls() if attnkit.get_impl(n).returns_lse and attnkit.get_impl(n).exact
             and runs_on_cpu(n)]


def _qkv(b=2, h=4, hkv=2, t=33, s=47, d=16, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, s, d + 3, generator=g, dtype=dtype)
    return [x.requires_grad_(grad) for x in (q, k, v)]


MASKS = {
    "none": lambda: None,
    "causal": lambda: masks.causal(),
    "window": lambda: masks.causal() & masks.window(5, 0),
    "padding": lambda: masks.padding(torch.tensor([47, 20])),
    "dead rows": lambda: masks.causal(align="bottom_right") & masks.padding(torch.tensor([47, 3])),
}


def _manual_lse(q, k, mask):
    call = attnkit.call.make_call(q, k, k, mask)
    s = call.scores()
    dense = call.dense_mask()
    if dense is not None:
        s = s.masked_fill(~dense, -math.inf)
    return torch.logsumexp(s, -1)  # -inf where every key is masked


@pytest.mark.parametrize("impl", LSE_IMPLS)
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_lse_matches_the_definition(impl, mask_name):
    q, k, v = _qkv(t=33 if mask_name != "dead rows" else 60, s=47)
    mask = MASKS[mask_name]()
    out, lse = attnkit.attention(q, k, v, mask, impl=impl, return_lse=True)
    want = _manual_lse(q, k, mask)
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float64
    assert torch.equal(torch.isinf(lse), torch.isinf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(lse[fin], want[fin], atol=1e-9, rtol=1e-9)
    if mask_name == "dead rows":
        assert (lse == -math.inf).any() and (out[lse == -math.inf] == 0).all()


def test_lse_is_float32_for_half_inputs():
    q, k, v = _qkv(dtype=torch.bfloat16)
    _, lse = attnkit.attention(q, k, v, impl="reference", return_lse=True)
    assert lse.dtype == torch.float32


@pytest.mark.parametrize("impl", LSE_IMPLS)
def test_weights_and_lse_together(impl):
    q, k, v = _qkv()
    if not attnkit.get_impl(impl).returns_weights:
        pytest.skip("cannot return weights")
    out, w, lse = attnkit.attention(q, k, v, masks.causal(), impl=impl, return_weights=True, return_lse=True)
    ref_out, ref_w = attnkit.attention(q, k, v, masks.causal(), impl="reference", return_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    assert lse.shape == q.shape[:3]


@pytest.mark.parametrize("impl", LSE_IMPLS)
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "dead rows"])
@pytest.mark.parametrize("n_parts", [2, 3])
def test_merge_partials_equals_attention_over_the_union(impl, mask_name, n_parts):
    """Forward and backward: attention over key pieces merged by their lse equals attention over
    all keys (the split over keys that ring attention and split-key kernels rely on)."""
    q, k, v = _qkv(t=40, s=47, grad=True)
    mask = MASKS[mask_name]()
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(2, 4, 40, 19, generator=g, dtype=torch.float64)
    dlse = torch.randn(2, 4, 40, generator=g, dtype=torch.float64)

    out, lse = attnkit.attention(q, k, v, mask, impl="reference", return_lse=True)
    fin = torch.isfinite(lse)
    (out * dout).sum().backward(inputs=[q, k, v], retain_graph=True)
    want = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    # the same problem in key pieces: the mask is sliced with its dense grid, so every piece
    # sees exactly the keys the whole problem allows
    dense = attnkit.call.make_call(q, k, v, mask).dense_mask()
    bounds = torch.linspace(0, 47, n_parts + 1).round().long().tolist()
    parts = []
    for j0, j1 in zip(bounds, bounds[1:]):
        m = None if dense is None else dense[..., j0:j1]
        parts.append(attnkit.attention(q, k[:, :, j0:j1], v[:, :, j0:j1], m, impl=impl, return_lse=True))
    merged, merged_lse = attnkit.merge_partials(parts)
    torch.testing.assert_close(merged, out, atol=1e-10, rtol=1e-10)
    assert torch.equal(torch.isinf(merged_lse), ~fin)
    torch.testing.assert_close(merged_lse[fin], lse[fin], atol=1e-10, rtol=1e-10)
    (merged * dout).sum().backward(inputs=[q, k, v], retain_graph=True)
    for got, exp in zip((q.grad, k.grad, v.grad), want):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, exp, atol=1e-9, rtol=1e-9)
    # the lse's own gradient flows too: d(sum(lse * dlse)) through merge equals through the whole
    for x in (q, k, v):
        x.grad = None
    (torch.where(fin, merged_lse, 0.0) * dlse).sum().backward(inputs=[q, k])
    got = [q.grad.clone(), k.grad.clone()]
    for x in (q, k):
        x.grad = None
    (torch.where(fin, lse, 0.0) * dlse).sum().backward(inputs=[q, k])
    for a, b in zip(got, (q.grad, k.grad)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_merge_partials_gradcheck():
    g = torch.Generator().manual_seed(3)
    outs = [torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    lses = [torch.randn(1, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]

    def f(*xs):
        out, lse = attnkit.merge_partials(list(zip(xs[:3], xs[3:])))
        return out, lse

    assert torch.autograd.gradcheck(f, (*outs, *lses))


def test_merge_partials_dead_rows_are_zero_with_zero_gradient():
    out = torch.randn(1, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    lse = torch.tensor([[[-math.inf, 0.5]]], dtype=torch.float64, requires_grad=True)
    dead = torch.full((1, 1, 2), -math.inf, dtype=torch.float64)
    merged, m_lse = attnkit.merge_partials([(out, lse), (torch.zeros(1, 1, 2, 3, dtype=torch.float64), dead)])
    assert (merged[0, 0, 0] == 0).all() and m_lse[0, 0, 0] == -math.inf
    torch.testing.assert_close(merged[0, 0, 1], out[0, 0, 1])
    merged.sum().backward()
    assert torch.isfinite(out.grad).all() and torch.isfinite(lse.grad).all()
    assert (out.grad[0, 0, 0] == 0).all()


def test_merge_partials_propagates_nan():
    out = torch.randn(1, 1, 2, 3)
    out[0, 0, 1, 0] = math.nan
    merged, _ = attnkit.merge_partials([(out, torch.zeros(1, 1, 2)), (torch.randn(1, 1, 2, 3), torch.zeros(1, 1, 2))])
    assert torch.isnan(merged[0, 0, 1, 0]) and torch.isfinite(merged[0, 0, 0]).all()


@pytest.mark.parametrize("parts, err, match", [
    ([], AttnKitError, "non-empty list"),
    ("ab", AttnKitError, "non-empty list"),
    ([torch.zeros(1, 1, 2, 3)], AttnKitError, r"parts\[0\] must be a pair"),
    ([(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 3))], ShapeError, r"lse \(B, H, T\)"),
    ([(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 2)), (torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2))],
     ShapeError, "same queries"),
])
def test_merge_partials_rejects_bad_input(parts, err, match):
    with pytest.raises(err, match=match):
        attnkit.merge_partials(parts)


def test_return_lse_needs_softmax():
    q, k, v = _qkv()
    with pytest.raises(AttnKitError, match="return_lse=True needs weight='softmax'.*sparsemax"):
        attnkit.attention(q, k, v, weight="sparsemax", return_lse=True)
    with pytest.raises(AttnKitError, match="return_lse must be True or False"):
        attnkit.attention(q, k, v, return_lse="yes")


def test_impls_without_lse_refuse_when_pinned():
    q, k, v = _qkv()
    no_lse = [n for n in attnkit.list_impls() if not attnkit.get_impl(n).returns_lse]
    for name in no_lse:
        report = attnkit.explain_dispatch(q, k, v, impl=name, return_lse=True)
        assert report.chosen is None and any("log-sum-exp" in r for r in report.reasons[name])
    assert attnkit.explain_dispatch(q, k, v, return_lse=True).chosen in LSE_IMPLS


def test_every_impl_returns_the_result_type():
    q, k, v = _qkv(dtype=torch.float32)
    for name in attnkit.list_impls():
        spec = attnkit.get_impl(name)
        call = attnkit.call.make_call(q, k, v, masks.causal())
        if attnkit.not_supported_reasons(spec, call):
            continue
        res = spec.fn(call)
        assert isinstance(res, attnkit.AttnResult) and res.out.shape == (2, 4, 33, 19)
        assert res.weights is None and res.lse is None, name  # not asked for, not computed


def test_merge_partials_is_exact_at_large_log_sum_exp():
    """Parts whose lse is about -1e5 (a shared-QK query that sees only itself): shares taken
    relative to the total lse would carry its float32 rounding (about 0.008 there) into the
    output; taken relative to the largest part they are exact."""
    v = torch.randn(1, 2, 3, 8)
    lse = torch.full((1, 2, 3), -1e5)
    out, total = attnkit.merge_partials([(v, lse), (v, lse - math.log(2.0)), (v, lse)])
    torch.testing.assert_close(out, v, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(total, lse + math.log(2.5), atol=0.02, rtol=0)
