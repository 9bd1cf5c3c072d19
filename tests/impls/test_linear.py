"""Linear (kernel) attention against the explicitly computed kernel attention.

Oracle: ``A = phi(q) phi(k)^T`` materialised, masked (causal / padding), row-normalised, times
``v``; forward and backward in float64 at 1e-10. FAVOR+ against softmax attention: the error
falls as the number of random features grows (fixed seeds, averaged over draws, with a margin).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, UnsupportedError
from attnkit.impls.linear import OPTIONS, FavorProjection, favor_features, favor_projection, linear_attention
from attnkit.shapes import repeat_kv

FEATURES = {"identity": lambda x: x, "elu": lambda x: F.elu(x) + 1, "relu": F.relu}


def qkv(b=2, h=4, hkv=2, t=20, s=20, d=8, dv=6, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=dtype)
    return [x.requires_grad_(grad) for x in (q, k, v)]


def explicit(q, k, v, phi, mask=None):
    """The kernel attention written out with the (T, S) matrix."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    a = phi(q) @ phi(k).transpose(-1, -2)  # (B, H, T, S)
    if mask is not None:
        a = a * mask.dense4(q.shape[2], k.shape[2])
    return (a / a.sum(-1, keepdim=True)) @ v


def grads(out, inputs, seed=1):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, cot)


MASKS = {
    "none": lambda b, s: None,
    "causal": lambda b, s: masks.causal(),
    "causal_top_left": lambda b, s: masks.causal("top_left"),
    "padding": lambda b, s: masks.padding([s, max(1, s // 2)][:b]),
    "causal_padding": lambda b, s: masks.causal() & masks.from_key_padding(torch.arange(s).expand(b, s) % 4 != 3),
}


@pytest.mark.parametrize("fmap", ["identity", "elu"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("t,s,chunk", [(20, 20, 64), (20, 20, 6), (13, 20, 4)])
def test_equals_explicit_kernel_attention(fmap, mask_name, t, s, chunk):
    q, k, v = qkv(t=t, s=s, grad=True)
    if fmap == "identity":  # keep the identity kernel's row sums away from zero
        q, k = (x.detach().abs().add(0.1).requires_grad_() for x in (q, k))
    m = MASKS[mask_name](2, s)
    out = attnkit.attention(q, k, v, m, impl="linear", options={"feature_map": fmap, "chunk_size": chunk})
    ref = explicit(q, k, v, FEATURES[fmap], m)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for a, r in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 30), chunk=st.integers(1, 40), causal=st.booleans(), seed=st.integers(0, 99))
def test_chunking_never_changes_the_result(t, chunk, causal, seed):
    q, k, v = qkv(t=t, s=t, seed=seed)
    m = masks.causal() if causal else None
    out = attnkit.attention(q, k, v, m, impl="linear", options={"chunk_size": chunk})
    torch.testing.assert_close(out, explicit(q, k, v, FEATURES["elu"], m), atol=1e-10, rtol=1e-10)


def test_callable_feature_map_and_weights():
    q, k, v = qkv()
    phi = lambda x: torch.cat([F.relu(x), F.relu(-x)], -1) + 0.01  # F = 2D
    out, w = attnkit.attention(q, k, v, masks.causal(), impl="linear", options={"feature_map": phi},
                               return_weights=True)
    torch.testing.assert_close(out, explicit(q, k, v, phi, masks.causal()), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w @ repeat_kv(v, 2), out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_low_precision_follows_float64():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = attnkit.attention(q, k, v, masks.causal(), impl="linear")
    ref = explicit(q.double(), k.double(), v.double(), FEATURES["elu"], masks.causal())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


def test_dead_rows_are_zero():
    q, k, v = qkv(grad=True)
    out = attnkit.attention(q, k, v, masks.padding([0, 20]), impl="linear", options={"feature_map": "favor"})
    assert torch.all(out[0] == 0) and not torch.isnan(out).any()
    gq, _, gv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.all(gq[0] == 0) and not torch.isnan(gv).any()


def test_gradcheck_fp64():
    q, k, v = qkv(b=1, h=2, hkv=1, t=7, s=7, d=4, dv=3, grad=True)
    for opts in ({"chunk_size": 3}, {"feature_map": "favor", "n_features": 8, "chunk_size": 3},
                 {"feature_map": "favor", "n_features": 8, "chunk_size": 3, "eps": 0.0}):
        fn = lambda q, k, v: attnkit.attention(q, k, v, masks.causal(), impl="linear", options=opts)
        assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# FAVOR+
# ----------------------------------------------------------------------------------------------


def test_favor_projection_is_orthogonal_blocks_with_gaussian_norms():
    p = favor_projection(96, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert p.shape == (96, 32)
    for blk in p.split(32):
        gram = blk @ blk.T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max() < 1e-10
    norms = p.norm(dim=1)
    assert abs(float(norms.pow(2).mean()) - 32) < 6  # E|w|^2 = D for w ~ N(0, I)


def test_favor_estimates_the_softmax_kernel_without_bias():
    """Averaged over many draws, phi(q).phi(k) approaches exp(q.k)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=g, dtype=torch.float64) * 0.25
    k = torch.randn(5, 8, generator=g, dtype=torch.float64) * 0.25

    est = torch.zeros(4, 5, dtype=torch.float64)
    draws = 50
    for _ in range(draws):
        p = favor_projection(256, 8, generator=g, dtype=torch.float64)
        fq = torch.exp(q @ p.T - (q * q).sum(-1, keepdim=True) / 2) / 16.0
        fk = favor_features(k, p, is_query=False, key_dims=(-2,))  # stabilised by the global max
        est += fq @ fk.T * torch.exp((k @ p.T).amax())  # undo it
    rel = ((est / draws) - torch.exp(q @ k.T)).abs() / torch.exp(q @ k.T)
    assert rel.max() < 0.06


def test_favor_error_decreases_with_features():
    """Statistical: mean relative error to softmax over 4 fixed seeds, small-norm inputs, no
    feature floor (eps=0: the plain unbiased estimator)."""
    q, k, v = qkv(b=1, h=2, hkv=2, t=64, s=64, d=16, dtype=torch.float64)
    q, k = q * 0.5, k * 0.5
    ref = attnkit.attention(q, k, v, impl="reference")

    def err(n):
        errs = []
        for seed in range(4):
            out = attnkit.attention(q, k, v, impl="linear", options={"feature_map": "favor", "n_features": n,
                                                                    "seed": seed, "eps": 0.0})
            errs.append(float((out - ref).norm() / ref.norm()))
        return sum(errs) / len(errs)

    e = {n: err(n) for n in (8, 64, 512)}
    assert e[64] < 0.7 * e[8]
    assert e[512] < 0.7 * e[64]
    assert e[512] < 0.2  # 0.12 measured


def test_favor_causal_close_to_softmax_causal():
    q, k, v = qkv(b=1, h=2, hkv=2, t=48, s=48, d=16)
    q, k = q * 0.5, k * 0.5
    out = attnkit.attention(q, k, v, masks.causal(), impl="linear",
                            options={"feature_map": "favor", "n_features": 2048, "chunk_size": 16})
    ref = attnkit.attention(q, k, v, masks.causal(), impl="reference")
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_favor_redraw_and_seed():
    q, k, v = qkv()
    run = lambda **kw: attnkit.attention(q, k, v, impl="linear", options={"feature_map": "favor", **kw.pop("o")},
                                         **kw)
    assert torch.equal(run(o={"seed": 1}), run(o={"seed": 1}))
    assert not torch.equal(run(o={"seed": 1}), run(o={"seed": 2}))
    g = torch.Generator().manual_seed(0)
    a, b = run(o={"redraw": True}, generator=g), run(o={"redraw": True}, generator=g)
    assert not torch.equal(a, b)  # a fresh draw per call
    proj = favor_projection(256, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(run(o={"projection": proj}), run(o={"seed": 1}))


def test_favor_projection_module_redraws_on_interval():
    mod = FavorProjection(16, 8, redraw_interval=2, generator=torch.Generator().manual_seed(0))
    first = mod().clone()
    assert torch.equal(mod(), first)  # second call: same
    assert not torch.equal(mod(), first)  # third call: redrawn
    mod.eval()
    frozen = mod().clone()
    assert all(torch.equal(mod(), frozen) for _ in range(4))


# ----------------------------------------------------------------------------------------------
# memory, errors, dispatch
# ----------------------------------------------------------------------------------------------


def test_causal_memory_is_chunked():
    """No saved tensor holds a (T, F, Dv) prefix-sum history: the largest is O(T F Dv / chunk)."""
    t, d, chunk = 512, 32, 32
    q, k, v = qkv(b=1, h=1, hkv=1, t=t, s=t, d=d, dv=d, dtype=torch.float32, grad=True)
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
        linear_attention(q, k, v, masks.causal(), options={"chunk_size": chunk})
    assert max(sizes) <= max(t * d * d // chunk, t * chunk, t * d)
    assert sum(sizes) < t * d * d / 2  # one (T, F, Dv) history alone would be t * d * d


@pytest.mark.parametrize("opts,match", [
    ({"feature_map": "tanh"}, "feature_map"),
    ({"n_features": 0}, "n_features"),
    ({"chunk_size": -1}, "chunk_size"),
    ({"redraw": 1}, "redraw"),
    ({"eps": -1.0}, "eps"),
    ({"projection": torch.ones(3)}, "projection"),
    ({"bucket_size": 4}, "unknown options"),
])
def test_bad_options(opts, match):
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=match):
        attnkit.attention(q, k, v, impl="linear", options=opts)


def test_refuses_other_masks_and_is_never_auto():
    q, k, v = qkv(t=12, s=8)
    with pytest.raises(UnsupportedError, match="Window"):
        attnkit.attention(q, k, v, masks.window(2), impl="linear")
    with pytest.raises(UnsupportedError, match="T <= S"):
        attnkit.attention(q, k, v, masks.causal(), impl="linear")
    with pytest.raises(UnsupportedError, match="Not"):
        attnkit.attention(q, k, v, ~masks.causal(), impl="linear")
    assert attnkit.explain_dispatch(q, k, v).chosen != "linear"
    assert not attnkit.get_impl("linear").exact


# ----------------------------------------------------------------------------------------------
# non-finite inputs: propagated where attended, never leaked from hidden keys
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmap", ["elu", "favor"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_query_gives_a_nan_row(fmap, causal):
    q, k, v = qkv(t=24, s=24)
    m = masks.causal() if causal else None
    opts = {"feature_map": fmap, "chunk_size": 8}
    clean = attnkit.attention(q, k, v, m, impl="linear", options=opts)
    q[1, 3, 10] = float("nan")
    out = attnkit.attention(q, k, v, m, impl="linear", options=opts)
    assert torch.isnan(out[1, 3, 10]).all()
    rest = torch.ones(out.shape[:3], dtype=torch.bool)
    rest[1, 3, 10] = False
    torch.testing.assert_close(out[rest], clean[rest], atol=0, rtol=0)


@pytest.mark.parametrize("fmap", ["elu", "favor"])
@pytest.mark.parametrize("chunk", [4, 64])
def test_nan_key_reaches_the_queries_at_or_after_it(fmap, chunk):
    """Causal: the queries before a NaN key never see it (whatever the chunking), the others are
    NaN; without a mask every query attends it, so every row is NaN."""
    q, k, v = qkv(t=24, s=24)
    opts = {"feature_map": fmap, "chunk_size": chunk, "eps": 0.0}
    clean = attnkit.attention(q, k, v, masks.causal(), impl="linear", options=opts)
    k[0, 1, 10] = float("nan")  # kv head 1: query heads 2 and 3
    out = attnkit.attention(q, k, v, masks.causal(), impl="linear", options=opts)
    assert torch.isnan(out[0, 2:4, 10:]).all()
    hit = torch.zeros(out.shape[:3], dtype=torch.bool)
    hit[0, 2:4, 10:] = True
    torch.testing.assert_close(out[~hit], clean[~hit], atol=1e-12, rtol=1e-10)
    full = attnkit.attention(q, k, v, impl="linear", options=opts)
    assert torch.isnan(full[0, 2:4]).all() and torch.isfinite(full[0, :2]).all() and torch.isfinite(full[1]).all()


MASKED_NAN_CASES = {
    "padding": lambda: masks.padding([512, 300]),
    "causal_key_padding": lambda: masks.causal() & masks.from_key_padding(torch.arange(512).expand(2, 512) < 400),
}


@pytest.mark.parametrize("mask_name", list(MASKED_NAN_CASES))
@pytest.mark.parametrize("fmap", ["elu", "favor"])
@pytest.mark.parametrize("functional", [False, True])
def test_nan_in_hidden_keys_never_leaks(mask_name, fmap, functional):
    """B=2, H=4, T=S=512: NaN in every padded key and value of batch 1 changes nothing, forward
    or backward, through attention() and through linear_attention()."""
    m = MASKED_NAN_CASES[mask_name]()
    q, k, v = qkv(b=2, h=4, hkv=4, t=512, s=512, d=16, dv=16, dtype=torch.float32)
    keep = m.key_keep(512).view(2, 1, 512, 1)
    k_nan, v_nan = (torch.where(keep, x, float("nan")) for x in (k, v))
    opts = {"feature_map": fmap, "n_features": 64}

    def run(k, v):
        q_, k_, v_ = (x.detach().clone().requires_grad_() for x in (q, k, v))
        if functional:
            out = linear_attention(q_, k_, v_, m, options=opts)
        else:
            out = attnkit.attention(q_, k_, v_, m, impl="linear", options=opts)
        return out, grads(out, (q_, k_, v_))

    out, g = run(k_nan, v_nan)
    out_clean, g_clean = run(k, v)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in g)
    torch.testing.assert_close(out, out_clean, atol=0, rtol=0)
    for a, b in zip(g, g_clean):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# options as data
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n_features", "chunk_size", "seed"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_bad_int_options_name_the_option(name, value):
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=rf"linear option '{name}'.*got {value!r}"):
        attnkit.attention(q, k, v, impl="linear", options={name: value})
    with pytest.raises(AttnKitError, match=rf"linear option '{name}'"):
        linear_attention(q, k, v, options={name: value})


@pytest.mark.parametrize("opts,match", [
    ({"n_features": 0}, r"'n_features' must be >= 1"),
    ({"chunk_size": 0}, r"'chunk_size' must be >= 1"),
    ({"eps": float("nan")}, r"'eps': must be finite"),
    ({"eps": True}, r"'eps' must be float or int"),
    ({"feature_map": "softmax"}, r"'feature_map': must be one of \['elu', 'favor', 'relu', 'identity'\]"),
    ({"feature_map": 3}, r"'feature_map' must be str or Callable"),
    ({"projection": torch.ones(2, 3, 4)}, r"'projection': must be a 2-D \(F, D\) tensor, got shape \(2, 3, 4\)"),
    ({"projection": [[1.0]]}, r"'projection' must be Tensor"),
])
def test_bad_option_values(opts, match):
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=match):
        attnkit.attention(q, k, v, impl="linear", options=opts)


def test_options_declared_as_data():
    assert set(OPTIONS) == set(attnkit.get_impl("linear").options)
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=r"unknown linear options \['bucket_size'\]"):
        linear_attention(q, k, v, options={"bucket_size": 4})
    defaults = {name: opt.default for name, opt in OPTIONS.items()}
    torch.testing.assert_close(linear_attention(q, k, v, options=defaults), linear_attention(q, k, v), atol=0, rtol=0)
