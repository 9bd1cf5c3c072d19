"""MultiHeadAttention: parity with torch.nn.MultiheadAttention over its arguments, checkpoint
loading, GQA, ALiBi, q/k norm, implementation passthrough and errors."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, ShapeError
from attnkit.nn import KVCache, MultiHeadAttention

E, H, B, T, S = 16, 4, 2, 5, 7
TOL = dict(atol=1e-5, rtol=1e-5)


def _pair(batch_first=True, kdim=None, vdim=None, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first).eval()
    with torch.no_grad():  # non-zero biases so they are checked too
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    return ref, MultiHeadAttention.from_torch(ref).eval()


def _inputs(batch_first, kdim, vdim, cross, gen):
    shape = (lambda L, d: (B, L, d)) if batch_first else (lambda L, d: (L, B, d))
    q = torch.randn(*shape(T, E), generator=gen)
    if not cross:
        return q, q, q, T
    return q, torch.randn(*shape(S, kdim or E), generator=gen), torch.randn(*shape(S, vdim or E), generator=gen), S


def _masks(kind, lq, lk, gen):
    """(attn_mask, key_padding_mask, is_causal) in PyTorch's conventions; no fully masked rows."""
    keep_first = torch.zeros(lk, dtype=torch.bool)
    keep_first[0] = True
    if kind == "none":
        return None, None, False
    if kind == "bool2d":
        return (torch.rand(lq, lk, generator=gen) < 0.4) & ~keep_first, None, False
    if kind == "bool3d":
        return (torch.rand(B * H, lq, lk, generator=gen) < 0.4) & ~keep_first, None, False
    if kind == "float2d":
        m = torch.randn(lq, lk, generator=gen)
        m[:, 2] = float("-inf")
        return m, None, False
    if kind == "float3d":
        return torch.randn(B * H, lq, lk, generator=gen), None, False
    if kind == "kpm_bool":
        kpm = torch.zeros(B, lk, dtype=torch.bool)
        kpm[1, -2:] = True
        return None, kpm, False
    if kind == "kpm_float":
        kpm = torch.zeros(B, lk)
        kpm[0, -1] = float("-inf")
        kpm[1, 1] = -2.0
        return None, kpm, False
    if kind == "causal":
        return nn.Transformer.generate_square_subsequent_mask(lq), None, True
    if kind == "bool2d+kpm":
        kpm = torch.zeros(B, lk, dtype=torch.bool)
        kpm[0, -1] = True
        return (torch.rand(lq, lk, generator=gen) < 0.3) & ~keep_first, kpm, False
    raise ValueError(kind)


MASK_KINDS = ["none", "bool2d", "bool3d", "float2d", "float3d", "kpm_bool", "kpm_float", "causal", "bool2d+kpm"]


@pytest.mark.parametrize("batch_first,dims", [(True, (None, None)), (False, (None, None)), (True, (6, 10)),
                                              (False, (6, 10))])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_parity_with_torch(batch_first, dims, kind):
    kdim, vdim = dims
    ref, mine = _pair(batch_first, kdim, vdim)
    gen = torch.Generator().manual_seed(1)
    cross = kdim is not None
    q, k, v, lk = _inputs(batch_first, kdim, vdim, cross, gen)
    if kind == "causal" and cross:
        kind = "bool2d"
    am, kpm, causal = _masks(kind, T, lk, gen)
    for need, avg in itertools.product((True, False), (True, False)):
        want = ref(q, k, v, key_padding_mask=kpm, need_weights=need, attn_mask=am, average_attn_weights=avg,
                   is_causal=causal)
        got = mine(q, k, v, key_padding_mask=kpm, need_weights=need, attn_mask=am, average_attn_weights=avg,
                   is_causal=causal)
        torch.testing.assert_close(got[0], want[0], **TOL)
        if need:
            assert got[1].shape == want[1].shape
            torch.testing.assert_close(got[1], want[1], **TOL)
        else:
            assert got[1] is None and want[1] is None


@pytest.mark.parametrize("bias_kv,zero_attn", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("cross", [False, True])
def test_parity_with_appended_keys(bias_kv, zero_attn, kind, cross):
    """add_bias_kv / add_zero_attn: PyTorch appends the learned and the zero key after the inputs'
    keys, attendable whatever the masks say; outputs, weights (B, T, S + n) and gradients match."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, add_bias_kv=bias_kv, add_zero_attn=zero_attn, batch_first=True).eval()
    mine = MultiHeadAttention.from_torch(ref).eval()
    assert (mine.bias_k is not None) == bias_kv and mine.add_zero_attn == zero_attn
    gen = torch.Generator().manual_seed(1)
    q, k, v, lk = _inputs(True, None, None, cross, gen)
    if kind == "causal" and cross:
        kind = "bool2d"
    am, kpm, causal = _masks(kind, T, lk, gen)
    if kind.startswith("kpm") or kind == "bool2d+kpm":
        kpm[0] = True if kpm.dtype == torch.bool else float("-inf")  # a fully padded row: the appended keys remain
    want = ref(q, k, v, key_padding_mask=kpm, attn_mask=am, is_causal=causal, average_attn_weights=False)
    got = mine(q, k, v, key_padding_mask=kpm, attn_mask=am, is_causal=causal, average_attn_weights=False)
    assert got[1].shape == want[1].shape == (B, H, T, lk + int(bias_kv) + int(zero_attn))
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    want[0].square().sum().backward()
    got[0].square().sum().backward()
    torch.testing.assert_close(mine.bias_k.grad if bias_kv else mine.q_proj.weight.grad,
                               ref.bias_k.grad if bias_kv else ref.in_proj_weight.grad[:E], **TOL)


def test_appended_keys_keep_an_attnkit_mask_aligned():
    """An attnkit mask is evaluated on the inputs' own keys: a bottom-right causal mask over
    S > T keys stays aligned to the inputs' end, not to the appended keys."""
    torch.manual_seed(0)
    mine = MultiHeadAttention(E, H, add_bias_kv=True, add_zero_attn=True).eval()
    q, kv = torch.randn(B, 3, E), torch.randn(B, 6, E)
    _, w = mine(q, kv, kv, mask=masks.causal())  # query i sees keys j <= i + 3, then the two appended
    allowed = (w[0] > 0)
    want = torch.cat([masks.causal().dense(3, 6), torch.ones(3, 2, dtype=torch.bool)], dim=1)
    assert torch.equal(allowed, want)


@pytest.mark.parametrize("bias", [True, False])
def test_backward_parity(bias):
    ref, mine = _pair(bias=bias)
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(B, T, E, generator=gen, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    am = nn.Transformer.generate_square_subsequent_mask(T)
    (ref(x1, x1, x1, attn_mask=am)[0] ** 2).sum().backward()
    (mine(x2, x2, x2, attn_mask=am)[0] ** 2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    gi = ref.in_proj_weight.grad.chunk(3)
    for g, lin in zip(gi, (mine.q_proj, mine.k_proj, mine.v_proj)):
        torch.testing.assert_close(lin.weight.grad, g, **TOL)
    torch.testing.assert_close(mine.o_proj.weight.grad, ref.out_proj.weight.grad, **TOL)


def test_unbatched_input():
    ref, mine = _pair(batch_first=True)
    x = torch.randn(T, E)
    kpm = torch.tensor([False, False, True, False, False])
    want = ref(x, x, x, key_padding_mask=kpm)
    got = mine(x, x, x, key_padding_mask=kpm)
    assert got[0].shape == (T, E) and got[1].shape == (T, T)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)


def test_load_state_dict_of_torch_module_with_separate_qkv_weights():
    torch.manual_seed(3)
    ref = nn.MultiheadAttention(E, H, kdim=6, vdim=10, batch_first=True).eval()
    assert "q_proj_weight" in ref.state_dict()
    mine = MultiHeadAttention(E, H, kdim=6, vdim=10, batch_first=True).eval()
    mine.load_state_dict(ref.state_dict())
    q, k, v = torch.randn(B, T, E), torch.randn(B, S, 6), torch.randn(B, S, 10)
    torch.testing.assert_close(mine(q, k, v)[0], ref(q, k, v)[0], **TOL)
    assert set(mine.state_dict()) == {f"{n}_proj.{p}" for n in "qkvo" for p in ("weight", "bias")}


def test_load_torch_state_dict_nested_under_a_prefix():
    torch.manual_seed(4)
    ref = nn.Sequential(nn.MultiheadAttention(E, H, batch_first=True))
    mine = nn.Sequential(MultiHeadAttention(E, H, batch_first=True))
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, E)
    torch.testing.assert_close(mine[0](x)[0], ref[0](x, x, x)[0], **TOL)


def test_fully_masked_rows_give_zero_weights_not_nan():
    _, mine = _pair()
    x = torch.randn(B, T, E)
    am = torch.zeros(T, T, dtype=torch.bool)
    am[1] = True  # query 1 may attend nothing
    with pytest.warns(UserWarning, match="no allowed key"):
        out, w = mine(x, attn_mask=am, average_attn_weights=False)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (w[:, :, 1] == 0).all()
    torch.testing.assert_close(out[:, 1], mine.o_proj.bias.expand(B, E))  # o_proj(0) = bias
    torch.testing.assert_close(w[:, :, 0].sum(-1), torch.ones(B, H))


def test_attnkit_mask_equals_torch_bool_mask():
    _, mine = _pair()
    x = torch.randn(B, T, E)
    causal_bool = torch.ones(T, T, dtype=torch.bool).triu(1)
    want = mine(x, attn_mask=causal_bool)
    for got in (mine(x, mask=masks.causal()), mine(x, attn_mask=masks.causal()), mine(x, is_causal=True)):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    win = mine(x, mask=masks.window(1), attn_mask=causal_bool)[1]
    assert (win[0].triu(1) == 0).all() and (win[0].tril(-2) == 0).all()


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_impl_passthrough(impl):
    _, base = _pair()
    mine = MultiHeadAttention(E, H, impl=impl).eval()
    mine.load_state_dict(base.state_dict())
    x = torch.randn(B, T, E)
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[0, -1] = True
    torch.testing.assert_close(mine(x, key_padding_mask=kpm, need_weights=False)[0],
                               base(x, key_padding_mask=kpm, need_weights=False)[0], **TOL)
    seen = []
    with attnkit.observe(lambda call, name, out, w: seen.append(name)):
        mine(x, need_weights=False)
    assert seen == [impl]


def test_unknown_impl_is_a_clear_error():
    mine = MultiHeadAttention(E, H, impl="no-such-impl")
    with pytest.raises(attnkit.UnknownNameError, match="no-such-impl"):
        mine(torch.randn(B, T, E))


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(5)
    gqa = MultiHeadAttention(E, H, num_kv_heads=2).eval()
    full = MultiHeadAttention(E, H).eval()
    d = E // H
    with torch.no_grad():
        full.q_proj.load_state_dict(gqa.q_proj.state_dict())
        full.o_proj.load_state_dict(gqa.o_proj.state_dict())
        for src, dst in ((gqa.k_proj, full.k_proj), (gqa.v_proj, full.v_proj)):
            w = src.weight.view(2, d, E).repeat_interleave(H // 2, dim=0).reshape(E, E)
            dst.weight.copy_(w)
            dst.bias.copy_(src.bias.view(2, d).repeat_interleave(H // 2, dim=0).reshape(E))
    assert gqa.k_proj.weight.shape == (2 * d, E)
    x = torch.randn(B, T, E)
    torch.testing.assert_close(gqa(x, is_causal=True)[0], full(x, is_causal=True)[0], **TOL)
    mqa = MultiHeadAttention(E, H, num_kv_heads=1)
    assert mqa(x)[0].shape == (B, T, E) and mqa.k_proj.weight.shape == (d, E)


def test_alibi_equals_the_explicit_bias():
    torch.manual_seed(6)
    mine = MultiHeadAttention(E, H, alibi=True).eval()
    plain = MultiHeadAttention(E, H).eval()
    plain.load_state_dict(mine.state_dict())
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])
    dist = (torch.arange(T).view(1, T) - torch.arange(T).view(T, 1)).abs().float()  # |i - j|
    bias = (-slopes.view(H, 1, 1) * dist).repeat(B, 1, 1)  # (B * H, T, T)
    x = torch.randn(B, T, E)
    want = plain(x, attn_mask=bias, average_attn_weights=False)
    got = mine(x, average_attn_weights=False)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)


def test_qk_norm_makes_scores_invariant_to_projection_scale():
    torch.manual_seed(7)
    mine = MultiHeadAttention(E, H, qk_norm=True, bias=False).eval()
    x = torch.randn(B, T, E)
    out1, w1 = mine(x)
    with torch.no_grad():
        mine.q_proj.weight.mul_(5.0)
        mine.k_proj.weight.mul_(0.1)
    out2, w2 = mine(x)
    torch.testing.assert_close(w1, w2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out1, out2, atol=1e-4, rtol=1e-4)
    assert "q_norm.weight" in mine.state_dict()


def test_score_and_weight_passthrough():
    torch.manual_seed(8)
    mine = MultiHeadAttention(E, H, weight="sparsemax").eval()
    x = torch.randn(B, T, E) * 3
    _, w = mine(x, average_attn_weights=False)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))
    assert (w == 0).any()  # sparsemax gives exact zeros
    cos = MultiHeadAttention(E, H, score="cosine").eval()
    cos.load_state_dict(mine.state_dict())
    assert cos(x)[0].shape == (B, T, E)


def test_dropout_only_in_training():
    torch.manual_seed(9)
    mine = MultiHeadAttention(E, H, dropout=0.5)
    x = torch.randn(B, T, E)
    mine.eval()
    torch.testing.assert_close(mine(x)[0], mine(x)[0])
    mine.train()
    assert not torch.allclose(mine(x, need_weights=False)[0], mine(x, need_weights=False)[0])


def test_fp64_and_grad_through_module():
    mine = MultiHeadAttention(E, H, dtype=torch.float64)
    x = torch.randn(1, 3, E, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mine(t, is_causal=True, need_weights=False)[0], (x,))


def test_errors():
    with pytest.raises(ShapeError, match="embed_dim=10 must be divisible by num_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ShapeError, match="num_kv_heads=3"):
        MultiHeadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(AttnKitError, match="dropout"):
        MultiHeadAttention(16, 4, dropout=1.5)
    mine = MultiHeadAttention(E, H)
    x = torch.randn(B, T, E)
    with pytest.raises(ShapeError, match=r"attn_mask must have shape .*got \(3, 3\)"):
        mine(x, attn_mask=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"key_padding_mask must have shape \(B, S\) = \(2, 5\)"):
        mine(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match="query last dim must be 16"):
        mine(torch.randn(B, T, 8))
    with pytest.raises(ShapeError, match="query must be 3-D"):
        mine(torch.randn(T))
    with pytest.raises(ShapeError, match="num_kv_heads"):
        MultiHeadAttention(E, H, num_kv_heads=2).load_state_dict(nn.MultiheadAttention(E, H).state_dict())
    with pytest.raises(AttnKitError, match="build this module with add_bias_kv=True"):
        MultiHeadAttention(E, H, batch_first=False).load_state_dict(
            nn.MultiheadAttention(E, H, add_bias_kv=True).state_dict())
    with pytest.raises(AttnKitError, match="KVCache cannot be used with add_bias_kv"):
        MultiHeadAttention(E, H, add_bias_kv=True)(x, cache=KVCache())
    with pytest.raises(attnkit.DTypeError, match="attn_mask must be bool"):
        mine(x, attn_mask=torch.zeros(T, T, dtype=torch.int64))


def test_default_scale_is_one_over_sqrt_head_dim():
    mine = MultiHeadAttention(E, H, bias=False).eval()
    x = torch.randn(1, 3, E)
    _, w = mine(x, average_attn_weights=False)
    q = mine.q_proj(x).view(1, 3, H, E // H).transpose(1, 2)
    k = mine.k_proj(x).view(1, 3, H, E // H).transpose(1, 2)
    want = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(E // H), -1)
    torch.testing.assert_close(w, want, **TOL)


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4, 8]), batch=st.integers(1, 3),
       lq=st.integers(1, 7), lk=st.integers(1, 7), batch_first=st.booleans(), need=st.booleans(),
       kv_dims=st.booleans(), seed=st.integers(0, 2**16))
def test_parity_property_random_shapes(heads, head_dim, batch, lq, lk, batch_first, need, kv_dims, seed):
    torch.manual_seed(seed)
    e = heads * head_dim
    kdim, vdim = (3, 5) if kv_dims else (None, None)
    ref = nn.MultiheadAttention(e, heads, kdim=kdim, vdim=vdim, batch_first=batch_first).eval()
    mine = MultiHeadAttention.from_torch(ref).eval()
    shape = (lambda L, d: (batch, L, d)) if batch_first else (lambda L, d: (L, batch, d))
    q = torch.randn(*shape(lq, e))
    k, v = torch.randn(*shape(lk, kdim or e)), torch.randn(*shape(lk, vdim or e))
    kpm = torch.rand(batch, lk) < 0.3
    kpm[:, 0] = False  # keep one key per row so PyTorch gives no NaN
    want = ref(q, k, v, key_padding_mask=kpm, need_weights=need)
    got = mine(q, k, v, key_padding_mask=kpm, need_weights=need)
    torch.testing.assert_close(got[0], want[0], **TOL)
    if need:
        torch.testing.assert_close(got[1], want[1], **TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.bfloat16, 3e-2)])
def test_parity_in_other_dtypes(dtype, tol):
    torch.manual_seed(10)
    ref = nn.MultiheadAttention(E, H, batch_first=True, dtype=dtype).eval()
    mine = MultiHeadAttention.from_torch(ref).eval()
    assert mine.q_proj.weight.dtype == dtype
    x = torch.randn(B, T, E, dtype=dtype)
    am = nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype)
    want, got = ref(x, x, x, attn_mask=am), mine(x, attn_mask=am)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol)
    torch.testing.assert_close(got[1], want[1], atol=tol, rtol=tol)


def test_every_exact_impl_inside_the_module_matches_reference():
    torch.manual_seed(11)
    base = MultiHeadAttention(32, 4, num_kv_heads=2, rope=True, impl="reference").eval()
    x = torch.randn(2, 40, 32)
    kpm = torch.zeros(2, 40, dtype=torch.bool)
    kpm[1, -5:] = True
    kw = dict(key_padding_mask=kpm, is_causal=True, need_weights=False)
    want = base(x, **kw)[0]
    ran = []
    for name in attnkit.list_impls():
        if not attnkit.get_impl(name).exact or name == "reference":
            continue
        mine = MultiHeadAttention(32, 4, num_kv_heads=2, rope=True, impl=name).eval()
        mine.load_state_dict(base.state_dict())
        try:
            got = mine(x, **kw)[0]
        except attnkit.UnsupportedError:
            continue  # the implementation declines this call (declared capability or cost model)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        ran.append(name)
    assert "sdpa" in ran


# -- fused q/k/v projection -----------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [H, 2])
def test_fused_qkv_state_dict_round_trips_between_layouts(kv_heads):
    torch.manual_seed(12)
    sep = MultiHeadAttention(E, H, num_kv_heads=kv_heads).eval()
    fused = MultiHeadAttention(E, H, num_kv_heads=kv_heads, fused_qkv=True).eval()
    kv = kv_heads * (E // H)
    assert fused.q_proj is None and fused.qkv_proj.weight.shape == (E + 2 * kv, E)
    assert set(fused.state_dict()) == {f"{n}_proj.{p}" for n in ("qkv", "o") for p in ("weight", "bias")}
    fused.load_state_dict(sep.state_dict())  # separate -> fused
    torch.testing.assert_close(fused.qkv_proj.weight[E:E + kv], sep.k_proj.weight)
    x, mem = torch.randn(B, T, E), torch.randn(B, S, E)
    for args in ((x,), (x, mem, mem)):  # self-attention (one matmul) and cross-attention (sliced weights)
        want = sep(*args, is_causal=True)
        got = fused(*args, is_causal=True)
        torch.testing.assert_close(got[0], want[0], **TOL)
        torch.testing.assert_close(got[1], want[1], **TOL)
    again = MultiHeadAttention(E, H, num_kv_heads=kv_heads, fused_qkv=True)
    again.load_state_dict(fused.state_dict())  # fused -> fused
    back = MultiHeadAttention(E, H, num_kv_heads=kv_heads)
    back.load_state_dict(fused.state_dict())  # fused -> separate
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        torch.testing.assert_close(getattr(back, n).weight, getattr(sep, n).weight, atol=0, rtol=0)
        torch.testing.assert_close(getattr(back, n).bias, getattr(sep, n).bias, atol=0, rtol=0)
    torch.testing.assert_close(again.qkv_proj.weight, fused.qkv_proj.weight, atol=0, rtol=0)


def test_fused_qkv_from_torch_matches_torch():
    ref, _ = _pair(batch_first=False)
    fused = MultiHeadAttention.from_torch(ref, fused_qkv=True).eval()
    torch.testing.assert_close(fused.qkv_proj.weight, ref.in_proj_weight, atol=0, rtol=0)
    x = torch.randn(T, B, E)
    am = nn.Transformer.generate_square_subsequent_mask(T)
    want, got = ref(x, x, x, attn_mask=am), fused(x, attn_mask=am)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)


def test_fused_qkv_with_a_static_cache_and_errors():
    torch.manual_seed(13)
    fused = MultiHeadAttention(E, H, fused_qkv=True, qk_norm=True).eval()
    x, mem = torch.randn(B, T, E), torch.randn(B, S, E)
    full = fused(x, mem, mem, need_weights=False)[0]
    cache = KVCache(static=True)
    steps = [fused(x[:, t:t + 1], mem, mem, cache=cache, need_weights=False)[0] for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    with pytest.raises(ShapeError, match="fused_qkv=True .* kdim == vdim == embed_dim=16; got kdim=6"):
        MultiHeadAttention(E, H, kdim=6, fused_qkv=True)


def test_forward_is_project_attend_o_proj():
    """The three public stages compose to forward, and attend takes attnkit masks and options."""
    torch.manual_seed(14)
    mha = MultiHeadAttention(E, H, num_kv_heads=2, rope=True, fused_qkv=True).eval()
    x = torch.randn(B, T, E)
    win = masks.window(1)
    want = mha(x, mask=win, need_weights=False)[0]
    q, k, v = mha.project(x)
    assert q.shape == (B, T, E) and k.shape == v.shape == (B, T, 2 * E // H)
    o, w = mha.attend(q, k, v, win, impl="reference", need_weights=True)
    assert w.shape == (B, H, T, T) and (w[..., 0, 2:] == 0).all()
    torch.testing.assert_close(mha.o_proj(o), want, **TOL)
    with pytest.raises(ShapeError, match=r"attend takes projected q of shape \(B, L, 16\)"):
        mha.attend(q[..., :8], k, v)
    with pytest.raises(AttnKitError, match="attend needs k and v"):
        mha.attend(q, None, None)
