"""KV cache: token-by-token decoding equals a full causal forward (RoPE, GQA, ALiBi), static
cross-attention caches, and clear errors on misuse."""

import pytest
import torch

from attnkit.errors import AttnKitError, DTypeError, ShapeError
from attnkit.nn import KVCache, LayerCaches, MultiHeadAttention

E, H, B, T = 32, 4, 2, 9


@pytest.mark.parametrize("kw", [
    {},
    {"rope": True},
    {"rope": True, "num_kv_heads": 2},
    {"num_kv_heads": 1, "alibi": True},
    {"rope": True, "qk_norm": True, "num_kv_heads": 2},
])
@pytest.mark.parametrize("max_len", [None, T])
def test_decode_token_by_token_equals_full_causal_forward(kw, max_len):
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, **kw).eval()
    x = torch.randn(B, T, E)
    full, _ = mha(x, is_causal=True, need_weights=False)
    cache = KVCache(max_len)
    steps = [mha(x[:, t: t + 1], cache=cache, is_causal=True, need_weights=False)[0] for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == T


@pytest.mark.parametrize("kw", [{"rope": True, "num_kv_heads": 2}, {"alibi": True}])
def test_prefill_then_steps_equals_full_forward(kw):
    torch.manual_seed(1)
    mha = MultiHeadAttention(E, H, **kw).eval()
    x = torch.randn(B, T, E)
    full, w_full = mha(x, is_causal=True)
    cache = KVCache()
    pre, w_pre = mha(x[:, :5], cache=cache, is_causal=True)  # prefill 5 positions
    torch.testing.assert_close(pre, full[:, :5], atol=1e-5, rtol=1e-5)
    chunk, w_chunk = mha(x[:, 5:7], cache=cache, is_causal=True)  # two at a time: causal within the chunk
    torch.testing.assert_close(chunk, full[:, 5:7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_chunk, w_full[:, 5:7, :7], atol=1e-5, rtol=1e-5)
    last, _ = mha(x[:, 7:], cache=cache, is_causal=True)
    torch.testing.assert_close(last, full[:, 7:], atol=1e-5, rtol=1e-5)


def test_key_padding_with_cache():
    torch.manual_seed(2)
    mha = MultiHeadAttention(E, H, rope=True).eval()
    x = torch.randn(B, T, E)
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[1, :2] = True  # left padding of the second sequence
    full, _ = mha(x, key_padding_mask=kpm, is_causal=True, need_weights=False)
    cache = KVCache()
    outs = [mha(x[:, t: t + 1], cache=cache, key_padding_mask=kpm[:, : t + 1], need_weights=False)[0]
            for t in range(T)]
    got = torch.cat(outs, 1)
    torch.testing.assert_close(got[:, 2:], full[:, 2:], atol=1e-5, rtol=1e-5)


def test_static_cross_attention_cache():
    torch.manual_seed(3)
    mha = MultiHeadAttention(E, H, kdim=12, vdim=12).eval()
    mem = torch.randn(B, 6, 12)
    x = torch.randn(B, T, E)
    full, _ = mha(x, mem, mem, need_weights=False)
    cache = KVCache(static=True)
    outs = [mha(x[:, t: t + 1], mem if t == 0 else None, None, cache=cache, need_weights=False)[0]
            for t in range(T)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 6
    with pytest.raises(AttnKitError, match="already filled"):
        cache.update(torch.zeros(B, H, 1, 8), torch.zeros(B, H, 1, 8))


def test_cache_grows_and_keeps_contents():
    c = KVCache()
    parts = [torch.randn(1, 2, n, 4) for n in (3, 20, 1, 40)]
    for p in parts:
        k, v = c.update(p, p * 2)
    want = torch.cat(parts, 2)
    torch.testing.assert_close(k, want)
    torch.testing.assert_close(v, want * 2)
    assert c.length == 64


def test_cache_reset_and_reorder():
    c = KVCache()
    c.update(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4))
    c.reset()
    assert c.is_empty
    k = torch.arange(3 * 2 * 4.0).view(3, 1, 2, 4)
    c.update(k, k)  # a new batch size after reset is fine
    c.reorder(torch.tensor([2, 0]))
    torch.testing.assert_close(c.keys, k[[2, 0]])
    caches = LayerCaches(3, max_len=8)
    assert len(caches) == 3 and caches.length == 0 and all(x.max_len == 8 for x in caches)


def test_cache_misuse_errors():
    c = KVCache(max_len=4)
    with pytest.raises(AttnKitError, match="empty"):
        _ = c.keys
    c.update(torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 3, 4))
    with pytest.raises(AttnKitError, match=r"overflow: holds 3 positions, max_len=4, got 2 more"):
        c.update(torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 2, 4))
    with pytest.raises(ShapeError, match=r"KVCache holds keys .*\(2, 2, S, 4\)"):
        c.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    with pytest.raises(DTypeError, match="float64"):
        c.update(torch.zeros(2, 2, 1, 4, dtype=torch.float64), torch.zeros(2, 2, 1, 4, dtype=torch.float64))
    with pytest.raises(ShapeError, match="must agree"):
        c.update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 2, 4))
    with pytest.raises(AttnKitError, match="max_len"):
        KVCache(max_len=0)
    mha = MultiHeadAttention(E, H)
    with pytest.raises(AttnKitError, match="cache must be an attnkit.nn.KVCache"):
        mha(torch.randn(B, 1, E), cache={})
    shared = KVCache()
    mha(torch.randn(B, 1, E), cache=shared)
    with pytest.raises(ShapeError, match="one cache per layer"):
        MultiHeadAttention(E, 2)(torch.randn(B, 1, E), cache=shared)
    with pytest.raises(AttnKitError, match="static"):
        MultiHeadAttention(E, H, rope=True)(torch.randn(B, 1, E), cache=KVCache(static=True))


def test_cache_is_differentiable_when_inputs_require_grad():
    torch.manual_seed(4)
    mha = MultiHeadAttention(E, H, rope=True)
    x = torch.randn(B, 4, E, requires_grad=True)
    cache = KVCache()
    a, _ = mha(x[:, :3], cache=cache, is_causal=True, need_weights=False)
    b, _ = mha(x[:, 3:], cache=cache, is_causal=True, need_weights=False)
    torch.cat((a, b), 1).sum().backward()
    g_cached = x.grad.clone()
    x.grad = None
    mha(x, is_causal=True, need_weights=False)[0].sum().backward()
    torch.testing.assert_close(g_cached, x.grad, atol=1e-5, rtol=1e-5)


def test_a_cache_makes_causal_the_default():
    """A prefill into a KVCache without is_causal attends causally (bottom-right aligned); an
    explicit is_causal=False or a structural mask keeps the call as asked."""
    from attnkit import masks
    from attnkit.nn import TransformerEncoderLayer

    torch.manual_seed(5)
    mha = MultiHeadAttention(E, H, rope=True).eval()
    x = torch.randn(B, T, E)
    causal = mha(x, is_causal=True, need_weights=False)[0]
    bidir = mha(x, need_weights=False)[0]
    assert not torch.allclose(causal, bidir, atol=1e-3)
    cache = KVCache()
    pre = mha(x[:, :5], cache=cache, need_weights=False)[0]
    chunk = mha(x[:, 5:], cache=cache, need_weights=False)[0]  # 4 queries over 9 keys: bottom-right
    torch.testing.assert_close(torch.cat((pre, chunk), 1), causal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mha(x, cache=KVCache(), is_causal=False, need_weights=False)[0], bidir,
                               atol=1e-5, rtol=1e-5)
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[0, 0] = True  # padding keeps the causal default
    torch.testing.assert_close(mha(x, cache=KVCache(), key_padding_mask=kpm, need_weights=False)[0],
                               mha(x, key_padding_mask=kpm, is_causal=True, need_weights=False)[0],
                               atol=1e-5, rtol=1e-5)
    win = masks.window(1)  # a structural mask replaces the default (this one sees one key ahead)
    torch.testing.assert_close(mha(x, cache=KVCache(), mask=win, need_weights=False)[0],
                               mha(x, mask=win, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    ahead = ~torch.ones(T, T, dtype=torch.bool).tril(1)  # PyTorch convention: True = not allowed
    torch.testing.assert_close(mha(x, cache=KVCache(), attn_mask=ahead, need_weights=False)[0],
                               mha(x, attn_mask=ahead, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    layer = TransformerEncoderLayer(E, H, 64, rope=True).eval()  # the layers follow the same rule
    torch.testing.assert_close(layer(x, cache=KVCache()), layer(x, is_causal=True), atol=1e-5, rtol=1e-5)
