"""``lsh`` runs its hash rounds on the native kernel (the look-one-back tiles of the sorted items,
with the pair rules in the kernel's ``hashed`` modifier) and gives what its PyTorch rounds give:
output, log-sum-exp and gradients, for every mode, mask and dtype it takes. What the kernel cannot
evaluate (weights, other masks, ``kernel="torch"``, no extension) stays on the PyTorch rounds."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import kernels, masks
from attnkit.impls.lsh import LSHSettings, lsh_attention
from attnkit.kernels import tiles

pytestmark = pytest.mark.skipif(kernels.unavailable_reason() is not None,
                                reason=f"native kernel unavailable: {kernels.unavailable_reason()}")


@pytest.fixture
def kernel_rounds(monkeypatch):
    """Small calls go to the kernel too; returns the list of kernel runs (one per hash round)."""
    monkeypatch.setattr(tiles, "KERNEL_MIN_WORK", 0)
    calls: list[int] = []
    real = tiles._TileAttention.apply

    def counted(q, k, v, plan, scale, mods, *biases):
        assert list(mods[0]) == [3]  # the hashed modifier alone
        calls.append(q.shape[2])
        return real(q, k, v, plan, scale, mods, *biases)

    monkeypatch.setattr(tiles._TileAttention, "apply", counted)
    return calls


def _inputs(b, h, hkv, t, s, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
            for shape in ((b, h, t, d), (b, hkv, s, d), (b, hkv, s, d))]


def _run(q, k, v, mask, **settings):
    """out, lse and the gradients of sum(out * c) + sum(lse * c2) (finite lse only)."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    res = lsh_attention(q, k, v, mask, settings=LSHSettings(**settings), return_lse=True)
    g = torch.Generator().manual_seed(3)
    c = torch.randn(res.out.shape, generator=g, dtype=torch.float64).to(res.out.dtype)
    c2 = torch.randn(res.lse.shape, generator=g, dtype=torch.float64).to(res.lse.dtype)
    loss = (res.out * c).sum() + torch.where(res.lse.isfinite(), res.lse * c2, 0.0).sum()
    grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip((q, k, v), grads)]
    return res.out.detach(), res.lse.detach(), *grads


def _same(got, ref, tol):
    for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
        assert a.shape == r.shape, name
        assert torch.equal(a.isinf(), r.isinf()), name
        torch.testing.assert_close(torch.where(r.isinf(), 0, a).double(), torch.where(r.isinf(), 0, r).double(),
                                   atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


LENGTHS = torch.tensor([37, 90])
CASES = {
    "none": None,
    "causal": masks.causal(),
    "causal_top_left": masks.causal(align="top_left"),
    "padding": masks.padding(LENGTHS),
    "key_mask": masks.from_key_padding(torch.arange(90).view(1, -1).expand(2, -1) % 3 != 1),
    "causal_and_padding": masks.causal() & masks.padding(LENGTHS),
}


@pytest.mark.parametrize("shared", [False, True], ids=["separate_qk", "shared_qk"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_rounds_equal_pytorch_rounds(kernel_rounds, case, shared):
    q, k, v = _inputs(2, 4, 4 if shared else 2, 90, 90, 16, torch.float64)
    opts = dict(bucket_size=8, n_hashes=3, shared_qk=shared, seed=1)
    got = _run(q, k, v, CASES[case], **opts)
    assert len(kernel_rounds) == 3
    ref = _run(q, k, v, CASES[case], kernel="torch", **opts)
    assert len(kernel_rounds) == 3  # the PyTorch rounds did not call the kernel
    _same(got, ref, 1e-9)


@pytest.mark.parametrize(("t", "s", "bucket", "rounds", "dedup"), [
    (50, 77, 8, 4, True),   # T != S, a partial last chunk
    (64, 64, 16, 1, True),  # one round: nothing to deduplicate
    (40, 40, 8, 3, False),  # a key found by several rounds counted each time
    (20, 20, 16, 2, True),  # <= 2 chunks: every round attends every key
    (33, 33, 64, 2, True),  # one chunk
])
def test_sizes_rounds_and_dedup(kernel_rounds, t, s, bucket, rounds, dedup):
    q, k, v = _inputs(1, 2, 2, t, s, 8, torch.float64, seed=t)
    opts = dict(bucket_size=bucket, n_hashes=rounds, dedup=dedup)
    _same(_run(q, k, v, masks.causal(), **opts), _run(q, k, v, masks.causal(), kernel="torch", **opts), 1e-9)
    assert len(kernel_rounds) == rounds


def test_output_is_the_dense_weights_times_v(kernel_rounds):
    """An oracle apart from both implementations: the PyTorch rounds' weights (each key counted once),
    applied to v, give the kernel's output."""
    q, k, v = _inputs(1, 2, 2, 70, 70, 8, torch.float64, seed=4)
    st = LSHSettings(bucket_size=8, n_hashes=4, seed=2)
    out = lsh_attention(q, k, v, masks.causal(), settings=st).out
    weights = lsh_attention(q, k, v, masks.causal(), settings=st, return_weights=True).dense_weights(70)
    torch.testing.assert_close(out, weights @ v, atol=1e-12, rtol=1e-12)
    total = weights.sum(-1).detach()  # 1, or 0 for a query whose chunks hold no earlier key
    one = (total - 1).abs() < 1e-12
    assert one.logical_or(total == 0).all() and one.float().mean() > 0.5
    assert len(kernel_rounds) == 4  # the call with weights stays on PyTorch


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_low_precision(kernel_rounds, dtype, tol):
    q, k, v = _inputs(1, 4, 2, 96, 96, 32, dtype, seed=6)
    got = _run(q, k, v, masks.causal(), bucket_size=16, n_hashes=2)
    ref = _run(q, k, v, masks.causal(), bucket_size=16, n_hashes=2, kernel="torch")
    assert got[0].dtype == dtype
    _same(got, ref, tol)


@pytest.mark.parametrize("mask", [None, masks.padding(torch.tensor([20]))], ids=["none", "padding"])
def test_gradcheck(kernel_rounds, mask):
    """Through output and log-sum-exp (no query without keys here: the check needs finite outputs)."""
    q, k, v = _inputs(1, 1, 1, 24, 24, 4, torch.float64, seed=8)
    st = LSHSettings(bucket_size=4, n_hashes=2, seed=3)

    def f(q, k, v):
        res = lsh_attention(q, k, v, mask, settings=st, return_lse=True)
        return res.out, res.lse

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert kernel_rounds


def test_shared_qk_self_only_row_has_no_gradient_through_the_self_score(kernel_rounds):
    """Causal shared-QK: query 0 sees only itself (score -1e5, a constant); its output is its own
    value and q gets no gradient from it."""
    q, _, v = _inputs(1, 1, 1, 32, 32, 4, torch.float64, seed=9)
    got = _run(q, q, v, masks.causal(), bucket_size=4, n_hashes=2, shared_qk=True)
    ref = _run(q, q, v, masks.causal(), bucket_size=4, n_hashes=2, shared_qk=True, kernel="torch")
    _same(got, ref, 1e-9)
    torch.testing.assert_close(got[0][0, 0, 0], v[0, 0, 0].detach())


def test_nan_in_an_attended_key_reaches_the_output_and_hidden_keys_never_do(kernel_rounds):
    q, k, v = _inputs(1, 1, 1, 40, 40, 8, torch.float64, seed=10)
    with torch.no_grad():
        k[0, 0, 5] = math.nan
        v[0, 0, 39] = math.nan  # hidden by the padding below
    st = LSHSettings(bucket_size=8, n_hashes=2)
    out = lsh_attention(q, k, v, masks.padding(torch.tensor([30])), settings=st).out
    ref = lsh_attention(q, k, v, masks.padding(torch.tensor([30])), settings=LSHSettings(bucket_size=8, n_hashes=2,
                                                                                      kernel="torch")).out
    assert torch.equal(out.isnan(), ref.isnan())
    assert out.isnan().any() and not out.isnan().all()  # the queries that attend key 5 in some round


def test_rows_without_any_key_are_zero_with_lse_minus_inf(kernel_rounds):
    q, k, v = _inputs(2, 2, 2, 48, 48, 8, torch.float64, seed=11)
    res = lsh_attention(q, k, v, masks.padding(torch.tensor([0, 48])), settings=LSHSettings(bucket_size=8),
                        return_lse=True)
    assert (res.out[0] == 0).all() and (res.lse[0] == -math.inf).all()
    assert res.lse[1].isfinite().all()


def test_what_the_kernel_cannot_evaluate_stays_on_pytorch(kernel_rounds):
    q, k, v = _inputs(1, 2, 2, 64, 64, 8, torch.float32)
    opts = {"bucket_size": 8, "n_hashes": 2}
    not_kernel = masks.causal() | masks.padding(torch.tensor([10]))  # an Or: evaluated by PyTorch
    for kw in ({"mask": not_kernel}, {"options": {**opts, "kernel": "torch"}}, {"return_weights": True}):
        call = {"mask": None, "options": opts, **kw}
        out = attnkit.attention(q, k, v, impl="lsh", **call)
        assert (out[0] if isinstance(out, tuple) else out).isfinite().all()
    assert kernel_rounds == []
    out = attnkit.attention(q, k, v, masks.causal(), impl="lsh", options=opts)
    assert len(kernel_rounds) == 2 and out.isfinite().all()


def test_bad_kernel_option_is_refused():
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(attnkit.AttnKitError, match="kernel"):
        attnkit.attention(q, q, q, impl="lsh", options={"kernel": "cuda"})


def test_without_the_extension_lsh_runs_its_pytorch_rounds(kernel_rounds, monkeypatch):
    def fail():
        raise RuntimeError("Error building extension 'attnkit_native': simulated compiler failure")

    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setattr(kernels, "_build", fail)
    q, k, v = _inputs(1, 2, 2, 64, 64, 8, torch.float64)
    got = _run(q, k, v, masks.causal(), bucket_size=8, n_hashes=2)
    assert kernel_rounds == []
    assert "could not be built" in kernels.unavailable_reason()
    _same(got, _run(q, k, v, masks.causal(), bucket_size=8, n_hashes=2, kernel="torch"), 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_hashing_gives_torch_buckets(dtype, monkeypatch):
    """The extension's one-pass hashing assigns every bucket as the torch computation does,
    including ties (first index), all-zero rows and rows with a NaN (first NaN + half)."""
    from attnkit.impls.lsh import items

    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 257, 16, generator=g, dtype=torch.float64).to(dtype)
    x[0, 4, 2] = math.nan
    x[1, 9] = 0.0
    rot = torch.randn(16, 3, 8, generator=g)
    rot[:, 1, 5] = rot[:, 1, 2]  # two equal columns in round 1: equal projections tie
    got = items.hash_vectors(x, rot, 16)
    monkeypatch.setattr(items, "native_hashing_usable", lambda x: False)
    want = items.hash_vectors(x, rot, 16)
    assert torch.equal(got, want)
    assert (got[0, :, 4] == 8).all() and (got[1, :, 9] == 0).all()
    assert got.shape == (3, 3, 257) and 0 <= int(got.min()) and int(got.max()) < 16
