"""LSH (Reformer) attention against exact oracles.

Oracles: (1) with one bucket and one chunk LSH *is* exact attention (reference, forward and
backward); (2) for any settings, LSH output equals the reference restricted to the keys LSH
attended (the returned weights' support), forward and backward, because rounds are combined by
log-sum-exp with duplicate keys counted once; (3) finite differences in float64.
Tolerances: float64 1e-10, float32 1e-5 (outputs) / 1e-4 (grads), bfloat16 2e-2 against the
float32 result.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, UnsupportedError
from attnkit.impls.lsh import (
    OPTIONS,
    LSHSettings,
    hash_vectors,
    lsh_attention,
    random_rotations,
    settings_from_options,
)
from attnkit.shapes import repeat_kv


def qkv(b=2, h=4, hkv=2, t=24, s=24, d=8, dv=6, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=dtype)
    return [x.requires_grad_(grad) for x in (q, k, v)]


def mask_cases(b: int, s: int):
    lengths = torch.tensor([s, max(1, s // 3)] + [s] * (b - 2))[:b]
    return {
        "none": None,
        "causal": masks.causal(),
        "padding": masks.padding(lengths),
        "key_padding": masks.from_key_padding(torch.arange(s).expand(b, s) % 3 != 1),
        "causal_padding": masks.causal() & masks.padding(lengths),
    }


def grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, cot)


# ----------------------------------------------------------------------------------------------
# one bucket, one chunk: exact
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_name", list(mask_cases(2, 20)))
@pytest.mark.parametrize("t,s", [(20, 20), (13, 20)])
def test_one_bucket_one_chunk_is_exact(mask_name, t, s):
    q, k, v = qkv(t=t, s=s, grad=True)
    m = mask_cases(2, s)[mask_name]
    opts = {"n_buckets": 1, "bucket_size": 64, "n_hashes": 3}
    out = attnkit.attention(q, k, v, m, impl="lsh", options=opts)
    ref = attnkit.attention(q, k, v, m, impl="reference")
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for a, r in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_one_bucket_low_precision(dtype, tol):
    q, k, v = qkv(dtype=dtype)
    opts = {"n_buckets": 1, "bucket_size": 64}
    out = attnkit.attention(q, k, v, masks.causal(), impl="lsh", options=opts)
    ref = attnkit.attention(q.double(), k.double(), v.double(), masks.causal(), impl="reference")
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------------
# any settings: exact on the attended keys
# ----------------------------------------------------------------------------------------------


def restricted_reference(q, k, v, m, w):
    """Reference attention allowed only on the keys LSH attended (support of its weights)."""
    support = w.detach() > 0
    allowed = support if m is None else support & m.dense4(q.shape[2], k.shape[2])
    return attnkit.attention(q, k, v, allowed, impl="reference")


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 40), extra_s=st.integers(0, 12), bucket=st.integers(1, 12), n_hashes=st.integers(1, 4),
       n_buckets=st.sampled_from([None, 1, 2, 4, 8]), mask_name=st.sampled_from(list(mask_cases(2, 8))),
       seed=st.integers(0, 1000))
def test_equals_reference_on_attended_keys(t, extra_s, bucket, n_hashes, n_buckets, mask_name, seed):
    s = t + extra_s
    q, k, v = qkv(t=t, s=s, seed=seed, grad=True)
    m = mask_cases(2, s)[mask_name]
    opts = {"bucket_size": bucket, "n_hashes": n_hashes, "n_buckets": n_buckets, "seed": seed}
    out, w = attnkit.attention(q, k, v, m, impl="lsh", options=opts, return_weights=True)
    ref = restricted_reference(q, k, v, m, w)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for a, r in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
    # weights: the output is their combination of the values; a live row sums to one
    torch.testing.assert_close(out, w @ repeat_kv(v, 2), atol=1e-10, rtol=1e-10)
    sums = w.sum(-1)
    assert torch.all(((sums - 1).abs() < 1e-10) | (sums == 0))


def test_shared_qk_matches_explicit_computation():
    q, _, v = qkv(hkv=4, t=30, s=30, grad=True)
    opts = {"shared_qk": True, "bucket_size": 5, "n_hashes": 2}
    out, w = attnkit.attention(q, q, v, masks.causal(), impl="lsh", options=opts, return_weights=True)
    keys = F.normalize(q, dim=-1)
    sc = (q @ keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    eye = torch.eye(30, dtype=torch.bool)
    sc = sc.masked_fill(eye, -1e5)  # self only when nothing else is allowed
    allowed = (w.detach() > 0) & masks.causal().dense(30, 30)
    expected = torch.softmax(sc.masked_fill(~allowed, -math.inf), -1) @ v
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    # query 0 (causal) has only itself; later queries never attend themselves when they have others
    assert torch.all(w[:, :, 0, 0] == 1)
    others = allowed & ~eye
    diag = torch.diagonal(w, dim1=-2, dim2=-1)
    assert torch.all(diag[others.any(-1)] < 1e-30)


def test_shared_qk_needs_square():
    q, k, v = qkv(t=8, s=10)
    with pytest.raises(UnsupportedError, match="shared_qk"):
        attnkit.attention(q, k, v, impl="lsh", options={"shared_qk": True})


# ----------------------------------------------------------------------------------------------
# what LSH finds
# ----------------------------------------------------------------------------------------------


def test_finds_every_key_in_the_query_bucket():
    """Four tight clusters of 16 points each, one bucket per cluster, bucket_size 16: every
    query attends all 16 members of its own cluster (shared-QK, one hash round)."""
    d, per, n_clusters = 16, 16, 4
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(n_clusters, d, generator=g, dtype=torch.float64)
    label = torch.arange(n_clusters).repeat_interleave(per)[torch.randperm(n_clusters * per, generator=g)]
    x = centers[label] + 0.01 * torch.randn(n_clusters * per, d, generator=g, dtype=torch.float64)
    q = x.view(1, 1, -1, d)
    v = torch.randn(1, 1, n_clusters * per, 4, generator=g, dtype=torch.float64)
    opts = {"shared_qk": True, "n_hashes": 1, "n_buckets": 8, "bucket_size": per, "seed": 3}
    buckets = hash_vectors(x.view(1, -1, d), random_rotations(d, 1, 8, seed=3), 8)[0, 0]
    bucket_of_cluster = [set(buckets[label == c].tolist()) for c in range(n_clusters)]
    assert all(len(b) == 1 for b in bucket_of_cluster)  # each cluster in one bucket ...
    assert len(set.union(*bucket_of_cluster)) == n_clusters  # ... and distinct buckets
    _, w = attnkit.attention(q, q, v, impl="lsh", options=opts, return_weights=True)
    same = label.view(-1, 1) == label.view(1, -1)
    same &= ~torch.eye(len(label), dtype=torch.bool)  # shared-QK excludes self
    assert torch.all(w[0, 0][same] > 0)


def test_recall_is_high_on_clustered_inputs():
    """Clustered queries/keys: most of the exact attention mass lands on attended keys."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 32, generator=g) * 3
    lab = torch.randint(0, 8, (256,), generator=g)
    x = (centers[lab] + 0.3 * torch.randn(256, 32, generator=g)).view(1, 1, 256, 32)
    v = torch.randn(1, 1, 256, 16, generator=g)
    _, w = attnkit.attention(x, x, v, impl="lsh", options={"bucket_size": 64, "n_hashes": 4}, return_weights=True)
    w_exact = attnkit.attention(x, x, v, impl="reference", return_weights=True)[1]
    recall = (w_exact * (w > 0)).sum(-1).mean()
    assert recall > 0.85  # 0.92 measured with this seed


def test_more_hashes_more_recall():
    q, k, v = qkv(b=1, h=2, hkv=2, t=128, s=128, d=16, dtype=torch.float32)
    w_exact = attnkit.attention(q, k, v, impl="reference", return_weights=True)[1]
    recall = {}
    for n in (1, 4):
        _, w = attnkit.attention(q, k, v, impl="lsh", options={"bucket_size": 16, "n_hashes": n},
                                 return_weights=True)
        recall[n] = float((w_exact * (w > 0)).sum(-1).mean())
    assert recall[4] > recall[1] + 0.05


# ----------------------------------------------------------------------------------------------
# causality, padding, dead rows
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_qk", [False, True])
def test_causal_never_attends_the_future(shared_qk):
    t = 40
    q, k, v = qkv(hkv=4, t=t, s=t, grad=True)
    kk = q if shared_qk else k
    opts = {"bucket_size": 4, "n_hashes": 3, "shared_qk": shared_qk}
    out, w = attnkit.attention(q, kk, v, masks.causal(), impl="lsh", options=opts, return_weights=True)
    assert torch.all(w.detach()[..., ~masks.causal().dense(t, t)] == 0)
    cut = 25
    # no gradient flows from the outputs of queries < cut to keys / values >= cut
    gk, gv = torch.autograd.grad(out[:, :, :cut].sum(), (k, v), allow_unused=True)
    if not shared_qk:
        assert torch.all(gk[:, :, cut:] == 0)
    assert torch.all(gv[:, :, cut:] == 0)
    # perturbing future values changes no past output
    v2 = v.detach().clone()
    v2[:, :, cut:] += 100.0
    out2 = attnkit.attention(q, kk, v2, masks.causal(), impl="lsh", options=opts)
    torch.testing.assert_close(out2[:, :, :cut], out[:, :, :cut].detach(), atol=0, rtol=0)


def test_padding_and_dead_rows():
    q, k, v = qkv(t=16, s=16, grad=True)
    m = masks.padding([0, 16])  # batch 0: every key is padding
    out = attnkit.attention(q, k, v, m, impl="lsh", options={"bucket_size": 4, "n_hashes": 2})
    assert torch.all(out[0] == 0) and not torch.isnan(out).any()
    gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.all(gq[0] == 0) and torch.all(gv[0] == 0) and not torch.isnan(gk).any()
    _, w = attnkit.attention(q, k, v, masks.padding([5, 16]), impl="lsh", options={"bucket_size": 4},
                             return_weights=True)
    assert torch.all(w[0, :, :, 5:] == 0)


# ----------------------------------------------------------------------------------------------
# gradients, determinism, memory
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_qk", [False, True])
def test_gradcheck_fp64(shared_qk):
    q, k, v = qkv(b=1, h=2, hkv=1, t=10, s=10, d=4, dv=3, grad=True)
    opts = {"bucket_size": 3, "n_hashes": 2, "n_buckets": 4, "shared_qk": shared_qk}
    fn = lambda q, k, v: attnkit.attention(q, k, v, masks.causal(), impl="lsh", options=opts)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


def test_deterministic_given_seed_or_generator():
    q, k, v = qkv(t=64, s=64)
    run = lambda **kw: attnkit.attention(q, k, v, impl="lsh", options={"bucket_size": 8, **kw.pop("o", {})}, **kw)
    assert torch.equal(run(o={"seed": 5}), run(o={"seed": 5}))
    assert not torch.equal(run(o={"seed": 5}), run(o={"seed": 6}))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(run(generator=g1), run(generator=g2))
    assert not torch.equal(run(generator=g1), run(generator=g2.manual_seed(10)))


def test_no_t_by_s_buffer():
    """Every tensor autograd keeps is far below T x S (per batch-head) elements."""
    t = 1024
    q, k, v = qkv(b=1, h=1, hkv=1, t=t, s=t, d=16, dv=16, dtype=torch.float32, grad=True)
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
        attnkit.attention(q, k, v, masks.causal(), impl="lsh", options={"bucket_size": 32, "n_hashes": 2})
    assert max(sizes) <= (t + t) * 2 * 32  # one score tile: (T + S) sorted items x 2 * bucket_size
    assert max(sizes) <= t * t / 8


# ----------------------------------------------------------------------------------------------
# errors and dispatch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts,match", [
    ({"n_buckets": 3}, "n_buckets"),
    ({"bucket_size": 0}, "bucket_size"),
    ({"n_hashes": 1.5}, "n_hashes"),
    ({"shared_qk": "yes"}, "shared_qk"),
    ({"chunk": 4}, "unknown options"),
])
def test_bad_options(opts, match):
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=match):
        attnkit.attention(q, k, v, impl="lsh", options=opts)


def test_refuses_other_masks_and_is_never_auto():
    q, k, v = qkv()
    with pytest.raises(UnsupportedError, match="Window"):
        attnkit.attention(q, k, v, masks.window(2), impl="lsh")
    assert attnkit.explain_dispatch(q, k, v).chosen != "lsh"
    assert not attnkit.get_impl("lsh").exact


def test_settings_defaults():
    st_ = LSHSettings()
    assert st_.buckets_for(1000) == 16 and st_.buckets_for(10) == 2
    assert LSHSettings(n_buckets=1).buckets_for(1000) == 1


def test_functional_sparse_result():
    q, k, v = qkv(t=32, s=32)
    res = lsh_attention(q, k, v, settings=LSHSettings(bucket_size=8, n_hashes=2), return_weights=True)
    assert res.indices.shape == res.values.shape == (2, 4, 32, 2 * 2 * 8)
    assert torch.all((res.indices >= 0) == (res.values > 0))
    torch.testing.assert_close(res.dense_weights(32) @ repeat_kv(v, 2), res.out)


# ----------------------------------------------------------------------------------------------
# non-finite inputs: propagated where attended, never leaked from hidden keys
# ----------------------------------------------------------------------------------------------

LOCAL = {"n_buckets": 1, "bucket_size": 8, "n_hashes": 1}  # one bucket: chunks by position only


def test_nan_query_gives_a_nan_row():
    q, k, v = qkv(t=48, s=48)
    clean = attnkit.attention(q, k, v, impl="lsh", options=LOCAL)
    q[1, 2, 17] = math.nan
    out = attnkit.attention(q, k, v, impl="lsh", options=LOCAL)
    assert torch.isnan(out[1, 2, 17]).all()
    rest = torch.ones(out.shape[:3], dtype=torch.bool)
    rest[1, 2, 17] = False
    torch.testing.assert_close(out[rest], clean[rest], atol=0, rtol=0)  # positions alone place the chunks
    # with hashing the NaN query lands in some bucket: its row is NaN, every other row finite
    hashed = attnkit.attention(q, k, v, impl="lsh", options={"bucket_size": 8, "n_hashes": 2})
    assert torch.isnan(hashed[1, 2, 17]).all() and torch.isfinite(hashed[rest]).all()


@pytest.mark.parametrize("where", ["k", "v"])
def test_nan_key_reaches_exactly_the_queries_that_attend_it(where):
    q, k, v = qkv(t=48, s=48)
    _, w = attnkit.attention(q, k, v, impl="lsh", options=LOCAL, return_weights=True)
    clean = attnkit.attention(q, k, v, impl="lsh", options=LOCAL)
    {"k": k, "v": v}[where][0, 1, 20] = math.nan  # kv head 1 is read by query heads 2 and 3
    out = attnkit.attention(q, k, v, impl="lsh", options=LOCAL)
    attends = torch.zeros(out.shape[:3], dtype=torch.bool)
    attends[0, 2:4] = w[0, 2:4, :, 20] > 0
    assert 0 < int(attends.sum()) < attends.numel()
    assert torch.isnan(out[attends]).all()
    torch.testing.assert_close(out[~attends], clean[~attends], atol=0, rtol=0)


@pytest.mark.parametrize("shared_qk", [False, True])
def test_nan_key_with_hashing_is_nan_where_attended(shared_qk):
    q, k, v = qkv(hkv=4, t=64, s=64)
    k = q if shared_qk else k
    k[0, 0, 30] = math.nan  # with shared_qk also a NaN query
    opts = {"bucket_size": 8, "n_hashes": 2, "shared_qk": shared_qk}
    out, w = attnkit.attention(q, k, v, impl="lsh", options=opts, return_weights=True)
    nan_rows = torch.isnan(out).any(-1)
    assert torch.equal(nan_rows, torch.isnan(out).all(-1))  # a row is NaN throughout or finite
    assert 0 < int(nan_rows[0, 0].sum()) and not nan_rows[1].any() and not nan_rows[:, 1:].any()
    # the finite rows are exact attention over the keys they attended, none of them the NaN key
    fin = ~nan_rows
    support = torch.nan_to_num(w, nan=0.0)
    if shared_qk:
        assert nan_rows[0, 0, 30]  # the NaN query's own row
        keys = F.normalize(q, dim=-1)
        sc = ((q @ keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])).masked_fill(torch.eye(64, dtype=torch.bool), -1e5)
        ref = torch.softmax(sc.masked_fill(support == 0, -math.inf), -1) @ v
    else:
        ref = restricted_reference(q, k, v, None, support)
    torch.testing.assert_close(out[fin], ref[fin], atol=1e-10, rtol=1e-10)


MASKED_NAN_CASES = {
    "padding": lambda: masks.padding([512, 300]),
    "causal_key_padding": lambda: masks.causal() & masks.from_key_padding(torch.arange(512).expand(2, 512) < 400),
}


@pytest.mark.parametrize("mask_name", list(MASKED_NAN_CASES))
@pytest.mark.parametrize("functional", [False, True])
def test_nan_in_hidden_keys_never_leaks(mask_name, functional):
    """B=2, H=4, T=S=512: NaN in every padded key and value of batch 1 changes nothing, forward
    or backward, through attention() and through lsh_attention()."""
    m = MASKED_NAN_CASES[mask_name]()
    q, k, v = qkv(b=2, h=4, hkv=4, t=512, s=512, d=16, dv=16, dtype=torch.float32)
    keep = m.key_keep(512).view(2, 1, 512, 1)
    k_nan, v_nan = (torch.where(keep, x, math.nan) for x in (k, v))
    settings_ = LSHSettings(bucket_size=32, n_hashes=2)

    def run(k, v):
        q_, k_, v_ = (x.detach().clone().requires_grad_() for x in (q, k, v))
        if functional:
            out = lsh_attention(q_, k_, v_, m, settings=settings_).out
        else:
            out = attnkit.attention(q_, k_, v_, m, impl="lsh", options={"bucket_size": 32, "n_hashes": 2})
        return out, grads(out, (q_, k_, v_))

    out, g = run(k_nan, v_nan)
    out_clean, g_clean = run(k, v)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in g)
    torch.testing.assert_close(out, out_clean, atol=0, rtol=0)
    for a, b in zip(g, g_clean):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# log-sum-exp
# ----------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(t=st.integers(1, 40), bucket=st.integers(1, 12), n_hashes=st.integers(1, 4),
       mask_name=st.sampled_from(list(mask_cases(2, 8))), seed=st.integers(0, 1000))
def test_lse_is_the_log_sum_exp_over_the_attended_keys(t, bucket, n_hashes, mask_name, seed):
    q, k, v = qkv(t=t, s=t + 3, seed=seed, grad=True)
    m = mask_cases(2, t + 3)[mask_name]
    opts = {"bucket_size": bucket, "n_hashes": n_hashes, "seed": seed}
    out, w, lse = attnkit.attention(q, k, v, m, impl="lsh", options=opts, return_weights=True, return_lse=True)
    support = w.detach() > 0
    allowed = support if m is None else support & m.dense4(t, t + 3)
    ref_out, ref_lse = attnkit.attention(q, k, v, allowed, impl="reference", return_lse=True)
    assert lse.dtype == torch.float64 and lse.shape == out.shape[:3]
    torch.testing.assert_close(lse, ref_lse, atol=1e-10, rtol=1e-10)  # -inf on the same dead rows
    cot = torch.randn(lse.shape, dtype=lse.dtype, generator=torch.Generator().manual_seed(2))
    live = torch.isfinite(ref_lse)
    g = torch.autograd.grad((torch.where(live, lse, 0) * cot).sum(), (q, k))
    g_ref = torch.autograd.grad((torch.where(live, ref_lse, 0) * cot).sum(), (q, k))
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


def test_lse_float32_for_half_inputs_and_merge_partials():
    """lsh results over two halves of the keys merge into exact attention over the union of the
    keys each half attended."""
    q, k, v = qkv(t=40, s=64, d=16, dtype=torch.float32)
    opts = {"bucket_size": 8, "n_hashes": 2}
    halves = [(0, 32), (32, 64)]
    parts, supports = [], []
    for j0, j1 in halves:
        out, w, lse = attnkit.attention(q, k[:, :, j0:j1], v[:, :, j0:j1], impl="lsh", options=opts,
                                        return_weights=True, return_lse=True)
        parts.append((out, lse))
        supports.append(w > 0)
    out, lse = attnkit.merge_partials(parts)
    union = torch.cat(supports, -1)
    ref_out, ref_lse = attnkit.attention(q, k, v, union, impl="reference", return_lse=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    _, lse_half = attnkit.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), impl="lsh", options=opts,
                                    return_lse=True)
    assert lse_half.dtype == torch.float32
    assert attnkit.get_impl("lsh").returns_lse


def test_lse_of_a_dead_row_is_minus_inf():
    q, k, v = qkv(t=16, s=16)
    _, lse = attnkit.attention(q, k, v, masks.padding([0, 16]), impl="lsh", options={"bucket_size": 4},
                               return_lse=True)
    assert torch.all(lse[0] == -math.inf) and torch.isfinite(lse[1]).all()


# ----------------------------------------------------------------------------------------------
# options as data
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bucket_size", "n_buckets", "n_hashes", "seed"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "4"])
def test_bad_int_options_name_the_option(name, value):
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=rf"lsh option '{name}'.*got {value!r}"):
        attnkit.attention(q, k, v, impl="lsh", options={name: value})
    with pytest.raises(AttnKitError, match=rf"lsh option '{name}'"):
        settings_from_options({name: value})


@pytest.mark.parametrize("opts,match", [
    ({"bucket_size": 0}, r"'bucket_size' must be >= 1"),
    ({"n_hashes": 0}, r"'n_hashes' must be >= 1"),
    ({"n_buckets": 5}, r"'n_buckets': must be 1 or even"),
    ({"dedup": 1}, r"'dedup' must be bool"),
    ({"shared_qk": None}, r"'shared_qk' must be bool"),
])
def test_bad_option_values(opts, match):
    q, k, v = qkv()
    with pytest.raises(AttnKitError, match=match):
        attnkit.attention(q, k, v, impl="lsh", options=opts)
    with pytest.raises(AttnKitError, match=match):
        LSHSettings(**opts)


def test_options_declared_as_data():
    assert set(OPTIONS) == set(attnkit.get_impl("lsh").options)
    assert LSHSettings() == settings_from_options({})
    assert all(getattr(LSHSettings(), name) == opt.default for name, opt in OPTIONS.items())
    assert settings_from_options({"n_buckets": None, "bucket_size": 16}) == LSHSettings(bucket_size=16)
    with pytest.raises(AttnKitError, match=r"unknown lsh options \['chunk'\]"):
        settings_from_options({"chunk": 4})
