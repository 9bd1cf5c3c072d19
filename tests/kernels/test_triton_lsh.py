"""impl="triton_lsh" against impl="lsh" with its rounds in PyTorch (``kernel="torch"``), the
same hashing: output, lse and gradients in both modes, every mask the kernels evaluate, duplicate
counting on and off, one round, GQA, T != S, bfloat16; and the refusals. CUDA where there is one,
else Triton's interpreter on CPU tensors."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, UnsupportedError


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    fin = torch.isfinite(b)
    assert torch.equal(fin, torch.isfinite(a)), "non-finite entries differ"
    return ((a[fin] - b[fin]).norm() / b[fin].norm().clamp(min=1e-12)).item()


def _run(impl, q, k, v, mask, opts, device):
    xs = [x.detach().to(device).requires_grad_() for x in (q, k, v)]
    out, lse = attnkit.attention(*xs, mask, impl=impl, options=opts, return_lse=True)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device)
    live = torch.isfinite(lse)
    ((out.float() * w).sum() + lse[live].sum()).backward()
    return out, lse, [x.grad if x.grad is not None else torch.zeros(0) for x in xs]


CASES = {
    "shared-none": (True, lambda: None, {}),
    "shared-causal": (True, lambda: masks.causal(), {}),
    "separate-padding": (False, lambda: masks.padding([50, 64]), {}),
    "separate-causal-padding": (False, lambda: masks.causal() & masks.padding([40, 64]), {}),
    "shared-one-round": (True, lambda: masks.causal(), {"n_hashes": 1}),
    "separate-no-dedup": (False, lambda: None, {"dedup": False}),
}


@pytest.mark.parametrize("rows", ["copy", "indexed"])
@pytest.mark.parametrize("case", list(CASES))
def test_rounds_match_the_pytorch_rounds(triton_device, case, rows):
    shared, make_mask, extra = CASES[case]
    g = torch.Generator().manual_seed(0)
    b = 2 if "padding" in case else 1
    q, k, v = (torch.randn(b, 2, 64, 16, generator=g) for _ in range(3))
    opts = {"bucket_size": 16, "n_hashes": 2, "shared_qk": shared, **extra}
    out, lse, grads = _run("triton_lsh", q, k, v, make_mask(), {**opts, "triton_rows": rows}, triton_device)
    ref, ref_lse, ref_grads = _run("lsh", q, k, v, make_mask(), {**opts, "kernel": "torch"}, "cpu")
    assert _rel(out, ref) < 1e-5 and _rel(lse, ref_lse) < 1e-6
    for got, want in zip(grads, ref_grads):
        if want.numel():
            assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("rows", ["copy", "indexed"])
def test_gqa_queries_and_keys_of_different_lengths_bfloat16(triton_device, rows):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 40, 16, generator=g)
    k, v = torch.randn(1, 2, 56, 16, generator=g), torch.randn(1, 2, 56, 16, generator=g)
    opts = {"bucket_size": 16, "n_hashes": 2, "triton_rows": rows}
    out, lse, _ = _run("triton_lsh", q, k, v, masks.causal(), opts, triton_device)
    ref, ref_lse, _ = _run("lsh", q, k, v, masks.causal(), {**opts, "kernel": "torch"}, "cpu")
    assert out.shape == (1, 4, 40, 16) and _rel(out, ref) < 1e-5 and _rel(lse, ref_lse) < 1e-6
    q, k, v = (x.bfloat16() for x in (q, k, v))  # the same rounded inputs hash alike on both sides
    half = attnkit.attention(q.to(triton_device), k.to(triton_device), v.to(triton_device), masks.causal(),
                             impl="triton_lsh", options=opts)
    ref = attnkit.attention(q.float(), k.float(), v.float(), masks.causal(), impl="lsh",
                            options={**opts, "kernel": "torch"})
    assert half.dtype == torch.bfloat16 and _rel(half, ref) < 2e-2


def test_a_query_alone_with_itself_keeps_its_value(triton_device):
    """Shared-QK, causal: query 0 can only attend itself (score -1e5) in every round; the rounds
    merge back to exactly v[0] (their lse is about -1e5, where float32 rounding is 0.008)."""
    g = torch.Generator().manual_seed(2)
    q, v = torch.randn(1, 2, 64, 16, generator=g), torch.randn(1, 2, 64, 16, generator=g)
    out = attnkit.attention(q.to(triton_device), q.to(triton_device), v.to(triton_device), masks.causal(),
                            impl="triton_lsh", options={"bucket_size": 16, "n_hashes": 3, "shared_qk": True})
    assert torch.allclose(out[0, :, 0].cpu(), v[0, :, 0], atol=1e-6)


def test_refusals_name_what_is_wrong(triton_device):
    q = torch.randn(1, 2, 32, 16, device=triton_device)
    with pytest.raises(UnsupportedError, match="bucket_size 24"):
        attnkit.attention(q, q, q, impl="triton_lsh", options={"bucket_size": 24})
    with pytest.raises(UnsupportedError, match="mask kinds"):
        attnkit.attention(q, q, q, masks.window(4), impl="triton_lsh", options={"bucket_size": 16})
    with pytest.raises(UnsupportedError, match="kernel"):
        attnkit.attention(q, q, q, impl="triton_lsh", options={"kernel": "torch"})
    with pytest.raises(UnsupportedError, match="weights"):
        attnkit.attention(q, q, q, impl="triton_lsh", options={"bucket_size": 16}, return_weights=True)
    with pytest.raises(AttnKitError, match="kernel='triton'"):
        attnkit.attention(q, q, q, impl="lsh", options={"kernel": "triton", "bucket_size": 24})


def test_fused_hashing_gives_torch_buckets(triton_device):
    from attnkit.impls.lsh import hash_vectors, random_rotations
    from attnkit.kernels.triton_hashing import hash_buckets

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 300, 24, generator=g)  # rows past a tile, a head dim that is padded
    for n_buckets in (2, 6, 160):  # one, a few and several column tiles of rotations
        rot = random_rotations(24, 3, n_buckets, seed=1)
        want = hash_vectors(x, rot, n_buckets)  # (2, 3, 300)
        got = hash_buckets(x.reshape(-1, 24).to(triton_device), rot).view(2, 300, 3).transpose(1, 2).cpu()
        assert got.dtype == torch.int64 and (got == want).float().mean() > 0.995  # float32 vs tiled sums


def test_fused_hashing_breaks_ties_as_torch(triton_device):
    """Exact ties (a zero row; two equal rotation columns) go to the first column, and the
    positive side before the negative one, as ``argmax([xR, -xR])`` does."""
    from attnkit.impls.lsh import hash_vectors, random_rotations
    from attnkit.kernels.triton_hashing import hash_buckets

    x = torch.randn(2, 200, 32, generator=torch.Generator().manual_seed(5)).bfloat16()  # exact bf16 products
    x[0, :7] = 0
    x[1, :3] = -x[1, 3:6]  # rows whose best side flips sign
    rot = random_rotations(32, 2, 8, seed=2)
    rot[:, :, 3] = rot[:, :, 1]  # a tie between columns 1 and 3 on every row
    want = hash_vectors(x.float(), rot, 8)  # (2, 2, 200)
    got = hash_buckets(x.reshape(-1, 32).to(triton_device), rot).view(2, 200, 2).transpose(1, 2).cpu()
    assert (got[0, :, :7] == 0).all()
    assert not (got == 3).any() and not (got == 7).any()  # column 3 never beats its twin column 1
    assert (got == want).float().mean() > 0.995
