"""Transformer layers and stacks of them over :class:`MultiHeadAttention` (pre- and post-norm),
and a small decoder-only language model with KV-cached greedy generation.

Parameter names follow ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
(``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``..``norm3``, stacks hold
``layers.N`` and ``norm``), and the attention modules convert PyTorch's attention keys on
loading, so ``layer.load_state_dict(torch_layer.state_dict())`` copies a PyTorch layer.

Extra keyword arguments of the layers (``num_kv_heads``, ``rope``, ``alibi``, ``qk_norm``,
``impl``, ``score``, ``weight``, ``fused_qkv``) go to every attention module. ``batch_first``
defaults to True (``(B, T, E)``); PyTorch's layers default to ``(T, B, E)``, so loading a PyTorch
state dict into a layer built without ``batch_first`` warns. With a KV cache, self-attention is
causal unless a mask or ``is_causal=False`` says otherwise.

Shape legend: B batch, T target length, S source length, E d_model, V vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AttnKitError, ShapeError
from ..masks import Mask
from .attention import MultiHeadAttention
from .cache import KVCache, LayerCaches

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
           "TransformerLM"]

Activation = str | Callable[[Tensor], Tensor]


def _activation(act: Activation) -> Callable[[Tensor], Tensor]:
    if callable(act):
        return act
    if act == "relu":
        return F.relu
    if act == "gelu":
        return F.gelu
    raise AttnKitError(f"activation must be 'relu', 'gelu' or a callable; got {act!r}")


class _FeedForward(nn.Module):
    """Mixin for the position-wise feed-forward sublayer ``linear2(dropout(act(linear1(x))))``."""

    linear1: nn.Linear
    linear2: nn.Linear
    dropout: nn.Dropout
    activation: Callable[[Tensor], Tensor]

    def _feed_forward(self, x: Tensor, drop: nn.Dropout) -> Tensor:
        return drop(self.linear2(self.dropout(self.activation(self.linear1(x)))))  # (B, T, E)

    def _init_ff(self, d_model: int, dim_feedforward: int, dropout: float, activation: Activation, bias: bool,
                 fk: dict[str, Any]) -> None:
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **fk)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **fk)
        self.activation = _activation(activation)


def _torch_layer_options(layer: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild a PyTorch Transformer layer."""
    attn = layer.self_attn
    ref = attn.in_proj_weight if attn.in_proj_weight is not None else attn.q_proj_weight
    return dict(d_model=attn.embed_dim, nhead=attn.num_heads, dim_feedforward=layer.linear1.out_features,
                dropout=layer.dropout.p, activation=layer.activation, layer_norm_eps=layer.norm1.eps,
                batch_first=attn.batch_first, norm_first=layer.norm_first, bias=layer.linear1.bias is not None,
                device=ref.device, dtype=ref.dtype)


def _from_torch(cls: type[nn.Module], layer: nn.Module, torch_cls: type[nn.Module], kwargs: dict[str, Any]) -> Any:
    if not isinstance(layer, torch_cls):
        raise AttnKitError(f"from_torch expects a {torch_cls.__name__}; got {type(layer).__name__}")
    module = cls(**{**_torch_layer_options(layer), **kwargs})
    module.load_state_dict(layer.state_dict())
    return module.train(layer.training)


class TransformerEncoderLayer(_FeedForward):
    """A transformer encoder layer: self-attention + feed-forward, with the arguments of
    ``nn.TransformerEncoderLayer`` (``batch_first`` defaults to True here). ``norm_first``
    selects pre-norm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool | None = None,
                 norm_first: bool = False, bias: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 **attn_kwargs: Any):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **attn_kwargs, **fk)
        self._init_ff(d_model, dim_feedforward, dropout, activation, bias, fk)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer, **kwargs: Any) -> TransformerEncoderLayer:
        """A copy of a ``torch.nn.TransformerEncoderLayer`` (same weights and options)."""
        return _from_torch(cls, layer, nn.TransformerEncoderLayer, kwargs)

    def _self_attention(self, x: Tensor, attn_mask: Tensor | Mask | None, kpm: Tensor | None,
                        is_causal: bool | None, mask: Mask | Tensor | None, cache: KVCache | None) -> Tensor:
        out = self.self_attn(x, x, x, key_padding_mask=kpm, need_weights=False, attn_mask=attn_mask,
                             is_causal=is_causal, mask=mask, cache=cache)[0]
        return self.dropout1(out)

    def forward(self, src: Tensor, src_mask: Tensor | Mask | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool | None = None, *,
                mask: Mask | Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """``src (B, T, E)`` -> ``(B, T, E)``; masks, ``is_causal`` and ``cache`` as in
        :meth:`MultiHeadAttention.forward` (``src_mask`` is its ``attn_mask``, PyTorch's convention;
        ``mask`` is attnkit's, True = attend)."""
        x = src
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal, mask, cache)
            return x + self._feed_forward(self.norm2(x), self.dropout2)
        x = self.norm1(x + self._self_attention(x, src_mask, src_key_padding_mask, is_causal, mask, cache))
        return self.norm2(x + self._feed_forward(x, self.dropout2))


class TransformerDecoderLayer(_FeedForward):
    """A transformer decoder layer: self-attention, cross-attention to ``memory``, feed-forward;
    the arguments of ``nn.TransformerDecoderLayer`` (``batch_first`` defaults to True here)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool | None = None,
                 norm_first: bool = False, bias: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 **attn_kwargs: Any):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **attn_kwargs, **fk)
        cross_kwargs = {k: v for k, v in attn_kwargs.items() if k not in ("rope", "alibi")}
        self.multihead_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first, **cross_kwargs, **fk)
        self._init_ff(d_model, dim_feedforward, dropout, activation, bias, fk)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    @classmethod
    def from_torch(cls, layer: nn.TransformerDecoderLayer, **kwargs: Any) -> TransformerDecoderLayer:
        """A copy of a ``torch.nn.TransformerDecoderLayer`` (same weights and options)."""
        return _from_torch(cls, layer, nn.TransformerDecoderLayer, kwargs)

    def _self_attention(self, x: Tensor, attn_mask: Any, kpm: Tensor | None, is_causal: bool | None,
                        cache: KVCache | None) -> Tensor:
        out = self.self_attn(x, x, x, key_padding_mask=kpm, need_weights=False, attn_mask=attn_mask,
                             is_causal=is_causal, cache=cache)[0]
        return self.dropout1(out)

    def _cross_attention(self, x: Tensor, memory: Tensor, attn_mask: Any, kpm: Tensor | None, is_causal: bool,
                         cache: KVCache | None) -> Tensor:
        out = self.multihead_attn(x, memory, memory, key_padding_mask=kpm, need_weights=False,
                                  attn_mask=attn_mask, is_causal=is_causal, cache=cache)[0]
        return self.dropout2(out)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | Mask | None = None,
                memory_mask: Tensor | Mask | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False, *, cache: KVCache | None = None,
                memory_cache: KVCache | None = None) -> Tensor:
        """``tgt (B, T, E)``, ``memory (B, S, E)`` -> ``(B, T, E)``. ``cache`` holds the self-attention
        keys/values while decoding; ``memory_cache`` (static) the projected memory."""
        x = tgt
        sa = (tgt_mask, tgt_key_padding_mask, tgt_is_causal, cache)
        ca = (memory, memory_mask, memory_key_padding_mask, memory_is_causal, memory_cache)
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), *sa)
            x = x + self._cross_attention(self.norm2(x), *ca)
            return x + self._feed_forward(self.norm3(x), self.dropout3)
        x = self.norm1(x + self._self_attention(x, *sa))
        x = self.norm2(x + self._cross_attention(x, *ca))
        return self.norm3(x + self._feed_forward(x, self.dropout3))


def _clones(layer: nn.Module, n: int) -> nn.ModuleList:
    if n < 1:
        raise AttnKitError(f"num_layers must be >= 1; got {n}")
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(n))


def _check_caches(caches: LayerCaches | None, n: int, name: str) -> None:
    if caches is not None and len(caches) != n:
        raise AttnKitError(f"{name} must hold one KVCache per layer ({n}); got {len(caches)}")


class TransformerEncoder(nn.Module):
    """A stack of transformer encoder layers: ``num_layers`` deep copies of ``encoder_layer`` and
    an optional final ``norm``."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask: Tensor | Mask | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool | None = None, *, caches: LayerCaches | None = None) -> Tensor:
        """``src (B, T, E)`` -> ``(B, T, E)``; ``caches``: one KVCache per layer (causal decoding)."""
        _check_caches(caches, self.num_layers, "caches")
        x = src
        for n, layer in enumerate(self.layers):
            x = layer(x, mask, src_key_padding_mask, is_causal, cache=None if caches is None else caches[n])
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(nn.Module):
    """A stack of transformer decoder layers: ``num_layers`` deep copies of ``decoder_layer`` and
    an optional final ``norm``."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | Mask | None = None,
                memory_mask: Tensor | Mask | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False, *, caches: LayerCaches | None = None,
                memory_caches: LayerCaches | None = None) -> Tensor:
        """``tgt (B, T, E)``, ``memory (B, S, E)`` -> ``(B, T, E)``."""
        _check_caches(caches, self.num_layers, "caches")
        _check_caches(memory_caches, self.num_layers, "memory_caches")
        x = tgt
        for n, layer in enumerate(self.layers):
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                      tgt_is_causal, memory_is_causal, cache=None if caches is None else caches[n],
                      memory_cache=None if memory_caches is None else memory_caches[n])
        return x if self.norm is None else self.norm(x)


class TransformerLM(nn.Module):
    """A decoder-only language model: embeddings, pre-norm causal layers with RoPE, final norm,
    output head tied to the embeddings. ``generate`` decodes greedily, with or without a KV cache.

    Args:
        vocab: vocabulary size V.
        d_model, nhead, num_layers, dim_feedforward: sizes.
        attn_kwargs: passed to every attention (``num_kv_heads``, ``impl``, ``alibi``...);
            ``rope`` defaults to True.
    """

    def __init__(self, vocab: int, d_model: int = 128, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 512, dropout: float = 0.0, **attn_kwargs: Any):
        super().__init__()
        attn_kwargs.setdefault("rope", True)
        self.embed = nn.Embedding(vocab, d_model)
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation="gelu",
                                        norm_first=True, **attn_kwargs)
        self.blocks = TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        self.vocab = vocab

    def new_cache(self, max_len: int | None = None) -> LayerCaches:
        """Empty per-layer KV caches for :meth:`forward` / :meth:`generate`."""
        return LayerCaches(self.blocks.num_layers, max_len)

    def forward(self, ids: Tensor, *, cache: LayerCaches | None = None) -> Tensor:
        """Token ids ``(B, T)`` -> logits ``(B, T, V)``; with ``cache`` the ids continue the cached ones."""
        if ids.dim() != 2:
            raise ShapeError(f"ids must be (B, T) token ids; got shape {tuple(ids.shape)}")
        h = self.blocks(self.embed(ids), is_causal=True, caches=cache)  # (B, T, E)
        return h @ self.embed.weight.T  # (B, T, V)

    def prefill(self, prompt: Tensor, max_len: int | None = None) -> tuple[Tensor, LayerCaches]:
        """Run the prompt ``(B, T)`` into fresh caches: next-token logits ``(B, V)`` and the caches."""
        cache = self.new_cache(max_len)
        return self(prompt, cache=cache)[:, -1], cache

    def step(self, tokens: Tensor, cache: LayerCaches) -> Tensor:
        """One decoding step: ``tokens (B,)`` follow the cached positions; next-token logits ``(B, V)``."""
        if tokens.dim() != 1:
            raise ShapeError(f"step tokens must be (B,) token ids; got shape {tuple(tokens.shape)}")
        if cache.length == 0:
            raise AttnKitError("step() needs a filled cache: call prefill(prompt) first")
        return self(tokens[:, None], cache=cache)[:, -1]

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, use_cache: bool = True) -> Tensor:
        """Greedy continuation: ``(B, max_new_tokens)`` new token ids. Without the cache every
        step recomputes the whole prefix (the baseline the cache is measured against)."""
        if use_cache:
            logits, cache = self.prefill(prompt, prompt.shape[1] + max_new_tokens)
            tok = logits.argmax(-1)  # (B,)
            out = [tok]
            for _ in range(max_new_tokens - 1):
                tok = self.step(tok, cache).argmax(-1)
                out.append(tok)
            return torch.stack(out, dim=1)
        seq = prompt
        for _ in range(max_new_tokens):
            tok = self(seq)[:, -1:].argmax(-1)
            seq = torch.cat((seq, tok), dim=1)
        return seq[:, prompt.shape[1]:]
