"""Transformer layers and stacks: equal outputs after copying PyTorch's weights (pre- and
post-norm), cached decoding equals the full forward, and errors."""

import pytest
import torch
from torch import nn

from attnkit import masks
from attnkit.errors import AttnKitError, ShapeError
from attnkit.nn import (
    LayerCaches,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerLM,
)

E, H, F, B, T, S = 16, 4, 32, 2, 6, 5
TOL = dict(atol=1e-5, rtol=1e-5)


def _randomise(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "bias" in name or "norm" in name:
                p.normal_(std=0.5 if "bias" in name else 1.0)


def _src(batch_first, L, gen):
    return torch.randn(B, L, E, generator=gen) if batch_first else torch.randn(L, B, E, generator=gen)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masking", ["none", "causal", "padding"])
def test_encoder_layer_parity(norm_first, batch_first, activation, masking):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(E, H, F, dropout=0.1, activation=activation, batch_first=batch_first,
                                     norm_first=norm_first).eval()
    _randomise(ref)
    mine = TransformerEncoderLayer(E, H, F, activation=activation, batch_first=batch_first,
                                   norm_first=norm_first).eval()
    mine.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = _src(batch_first, T, gen)
    kw = {}
    if masking == "causal":
        kw = dict(src_mask=nn.Transformer.generate_square_subsequent_mask(T), is_causal=True)
    elif masking == "padding":
        kpm = torch.zeros(B, T, dtype=torch.bool)
        kpm[1, -2:] = True
        kw = dict(src_key_padding_mask=kpm)
    want, got = ref(x, **kw), mine(x, **kw)
    if masking == "padding":  # PyTorch's fast path may leave padded positions unspecified
        sel = (slice(None), slice(0, T - 2)) if batch_first else (slice(0, T - 2), slice(None))
        want, got = want[sel], got[sel]
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_backward_parity_in_training(norm_first):
    torch.manual_seed(2)
    ref = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, batch_first=True, norm_first=norm_first)
    mine = TransformerEncoderLayer(E, H, F, dropout=0.0, batch_first=True, norm_first=norm_first)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, E)
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    (ref(x, src_mask=causal) ** 2).sum().backward()
    (mine(x, src_mask=causal) ** 2).sum().backward()
    torch.testing.assert_close(mine.linear1.weight.grad, ref.linear1.weight.grad, **TOL)
    torch.testing.assert_close(mine.self_attn.o_proj.weight.grad, ref.self_attn.out_proj.weight.grad, **TOL)
    torch.testing.assert_close(mine.self_attn.q_proj.weight.grad, ref.self_attn.in_proj_weight.grad[:E], **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_layer_parity(norm_first, batch_first):
    torch.manual_seed(3)
    ref = nn.TransformerDecoderLayer(E, H, F, batch_first=batch_first, norm_first=norm_first).eval()
    _randomise(ref)
    mine = TransformerDecoderLayer(E, H, F, batch_first=batch_first, norm_first=norm_first).eval()
    mine.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(4)
    tgt, mem = _src(batch_first, T, gen), _src(batch_first, S, gen)
    mkpm = torch.zeros(B, S, dtype=torch.bool)
    mkpm[0, -1] = True
    kw = dict(tgt_mask=nn.Transformer.generate_square_subsequent_mask(T), tgt_is_causal=True,
              memory_key_padding_mask=mkpm)
    torch.testing.assert_close(mine(tgt, mem, **kw), ref(tgt, mem, **kw), **TOL)


def test_stacks_parity():
    torch.manual_seed(5)
    enc_layer = nn.TransformerEncoderLayer(E, H, F, batch_first=True, norm_first=True)
    ref_enc = nn.TransformerEncoder(enc_layer, 2, norm=nn.LayerNorm(E), enable_nested_tensor=False).eval()
    ref_dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, F, batch_first=True), 2).eval()
    _randomise(ref_enc)
    _randomise(ref_dec)
    enc = TransformerEncoder(TransformerEncoderLayer(E, H, F, norm_first=True, batch_first=True), 2,
                             norm=nn.LayerNorm(E)).eval()
    dec = TransformerDecoder(TransformerDecoderLayer(E, H, F, batch_first=True), 2).eval()
    enc.load_state_dict(ref_enc.state_dict())
    dec.load_state_dict(ref_dec.state_dict())
    src, tgt = torch.randn(B, S, E), torch.randn(B, T, E)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, -1] = True
    mem_ref = ref_enc(src, src_key_padding_mask=kpm)
    mem = enc(src, src_key_padding_mask=kpm)
    torch.testing.assert_close(mem, mem_ref, **TOL)
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    torch.testing.assert_close(dec(tgt, mem, tgt_mask=causal, memory_key_padding_mask=kpm),
                               ref_dec(tgt, mem_ref, tgt_mask=causal, memory_key_padding_mask=kpm), **TOL)


def test_decoder_stack_cached_decoding_equals_full_forward():
    torch.manual_seed(6)
    dec = TransformerDecoder(TransformerDecoderLayer(E, H, F, norm_first=True, rope=True, num_kv_heads=2), 3).eval()
    tgt, mem = torch.randn(B, T, E), torch.randn(B, S, E)
    full = dec(tgt, mem, tgt_is_causal=True)
    caches, mem_caches = LayerCaches(3), LayerCaches(3, static=True)
    steps = [dec(tgt[:, t: t + 1], mem, tgt_is_causal=True, caches=caches, memory_caches=mem_caches)
             for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    assert caches.length == T and mem_caches.length == S


@pytest.mark.parametrize("kw", [{}, {"num_kv_heads": 1, "rope": False, "alibi": True}])
def test_lm_cached_generation_equals_recomputation(kw):
    torch.manual_seed(7)
    lm = TransformerLM(vocab=50, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, **kw).eval()
    prompt = torch.randint(0, 50, (2, 5))
    with_cache = lm.generate(prompt, 12, use_cache=True)
    without = lm.generate(prompt, 12, use_cache=False)
    assert with_cache.shape == (2, 12)
    assert torch.equal(with_cache, without)
    seq = torch.cat((prompt, with_cache), 1)
    full = lm(seq)
    cache = lm.new_cache()
    parts = [lm(seq[:, :5], cache=cache)] + [lm(seq[:, t: t + 1], cache=cache) for t in range(5, seq.shape[1])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layers_from_torch(norm_first):
    torch.manual_seed(10)
    enc = nn.TransformerEncoderLayer(E, H, F, activation="gelu", batch_first=False, norm_first=norm_first,
                                     layer_norm_eps=1e-6).eval()
    dec = nn.TransformerDecoderLayer(E, H, F, batch_first=True, norm_first=norm_first, bias=False).eval()
    my_enc, my_dec = TransformerEncoderLayer.from_torch(enc), TransformerDecoderLayer.from_torch(dec)
    assert not my_enc.training and my_enc.norm1.eps == 1e-6 and my_dec.linear1.bias is None
    x, mem = torch.randn(T, B, E), torch.randn(B, S, E)
    torch.testing.assert_close(my_enc(x), enc(x), **TOL)
    torch.testing.assert_close(my_dec(x.transpose(0, 1), mem), dec(x.transpose(0, 1), mem), **TOL)
    with pytest.raises(AttnKitError, match="from_torch expects a TransformerEncoderLayer"):
        TransformerEncoderLayer.from_torch(dec)


def test_lm_prefill_and_step_api():
    torch.manual_seed(9)
    lm = TransformerLM(vocab=30, d_model=16, nhead=2, num_layers=2, dim_feedforward=32).eval()
    seq = torch.randint(0, 30, (3, 8))
    full = lm(seq)
    logits, cache = lm.prefill(seq[:, :4], max_len=8)
    torch.testing.assert_close(logits, full[:, 3], **TOL)
    for t in range(4, 8):
        torch.testing.assert_close(lm.step(seq[:, t], cache), full[:, t], atol=1e-4, rtol=1e-4)
    assert cache.length == 8
    with pytest.raises(AttnKitError, match="overflow"):
        lm.step(seq[:, 0], cache)
    with pytest.raises(AttnKitError, match="prefill"):
        lm.step(seq[:, 0], lm.new_cache())
    with pytest.raises(ShapeError, match=r"step tokens must be \(B,\)"):
        lm.step(seq[:, :2], cache)


def test_attnkit_mask_and_impl_in_layers():
    torch.manual_seed(8)
    layer = TransformerEncoderLayer(E, H, F, impl="reference").eval()
    sdpa = TransformerEncoderLayer(E, H, F, impl="sdpa").eval()
    sdpa.load_state_dict(layer.state_dict())
    x = torch.randn(B, T, E)
    win = masks.causal() & masks.window(2)
    torch.testing.assert_close(layer(x, mask=win), sdpa(x, mask=win), **TOL)
    assert not torch.allclose(layer(x, mask=win), layer(x))


def test_layer_errors():
    with pytest.raises(AttnKitError, match="activation"):
        TransformerEncoderLayer(E, H, F, activation="swish")
    with pytest.raises(ShapeError, match="divisible"):
        TransformerEncoderLayer(18, 4)
    enc = TransformerEncoder(TransformerEncoderLayer(E, H, F), 2)
    with pytest.raises(AttnKitError, match=r"one KVCache per layer \(2\); got 3"):
        enc(torch.randn(B, T, E), caches=LayerCaches(3))
    with pytest.raises(AttnKitError, match="num_layers"):
        TransformerEncoder(TransformerEncoderLayer(E, H, F), 0)
    with pytest.raises(ShapeError, match=r"ids must be \(B, T\)"):
        TransformerLM(10, 16, 2, 1)(torch.zeros(3, dtype=torch.long))
