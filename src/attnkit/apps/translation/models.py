"""Translation models, all built from :mod:`attnkit.nn`, behind one decoding interface.

* ``rnn``: a GRU encoder-decoder without attention (Cho et al. 2014): the decoder sees the
  source only through one fixed vector, the encoder's final states.
* ``rnn-bahdanau``: the same encoder; each decoder step attends from its previous state with
  additive attention (Bahdanau et al. 2015), and the context feeds the GRU.
* ``rnn-luong``: the same encoder; each decoder output attends with Luong "general" attention,
  and ``tanh(W [c; h])`` feeds the output layer (Luong et al. 2015).
* ``transformer``: a pre-norm encoder-decoder (Vaswani et al. 2017) on attnkit's transformer
  layers, one embedding shared by source, target and output layer, KV-cached decoding.
* ``transformer-sparse``, ``transformer-lsh``: the same transformer with its encoder's
  self-attention restricted to a window plus a global first token (Longformer's pattern, run by
  attnkit's sparse implementations) or run by LSH attention (Kitaev et al. 2020) in buckets of
  ``bucket_size`` tokens; the decoder stays exact. The weights are interchangeable with the exact
  transformer's (:func:`with_encoder_attention`), so one trained model can be run all three ways.
* ``torch-transformer``: the same transformer built from ``torch.nn.Transformer`` (a throughput
  reference; it decodes by recomputation only).

Every model has ``forward(src, src_mask, tgt_in) -> logits (B, T, V)`` (teacher forcing), and for
decoding ``start(src, src_mask) -> state``, ``step(state, tokens (B,)) -> logits (B, V)`` and
``reorder(state, index)``. ``alignments(src, src_mask, tgt_in)`` gives the cross-attention weights
``(L, H, B, T, S)`` (None for the model without attention).

Shape legend: B batch, S source length, T target length, V vocabulary, E embedding, D model size,
L layers, H heads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ...errors import AttnKitError
from ...interpret import capture_attention
from ...masks import Mask
from ...masks.patterns import longformer
from ...nn import (
    AdditiveAttention,
    LayerCaches,
    LuongAttention,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    sinusoidal_encoding,
)
from .tokenizer import PAD

__all__ = ["MODELS", "ENCODER_ATTENTION", "ModelConfig", "Translator", "RNNTranslator", "TransformerTranslator",
           "TorchTransformerTranslator", "build_model", "with_encoder_attention"]

# what `attnkit train translation` offers
MODELS = ("rnn", "rnn-bahdanau", "rnn-luong", "transformer", "transformer-sparse", "transformer-lsh")
_ALL = (*MODELS, "torch-transformer")
ENCODER_ATTENTION = {"transformer": "exact", "transformer-sparse": "sparse", "transformer-lsh": "lsh"}


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a translation model (the RNNs use ``d_model`` as the GRU size per direction and
    ``emb_dim`` for embeddings; the transformers use ``d_model`` throughout)."""

    kind: str  # one of MODELS or "torch-transformer"
    vocab: int  # joint source/target vocabulary size V
    d_model: int = 128  # GRU size / transformer width D
    emb_dim: int = 64  # RNN embedding size E
    layers: int = 2  # transformer encoder and decoder layers
    heads: int = 4  # transformer attention heads
    ff: int = 256  # transformer feed-forward size
    dropout: float = 0.1
    max_len: int = 256  # the longest source or target the positions cover
    window: int = 8  # transformer-sparse: keys within this distance on each side (plus the first token)
    bucket_size: int = 8  # transformer-lsh: LSH chunk length
    n_hashes: int = 2  # transformer-lsh: hash rounds

    def __post_init__(self) -> None:
        if self.kind not in _ALL:
            raise AttnKitError(f"model {self.kind!r} is not known; expected one of {', '.join(MODELS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Translator(nn.Module):
    """The decoding interface shared by every translation model."""

    config: ModelConfig

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:  # (B, T, V)
        raise NotImplementedError(f"{type(self).__name__} must implement forward() (abstract base)")

    def start(self, src: Tensor, src_mask: Tensor) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} decodes by recomputation only (use_cache=False)")

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:  # (B, V)
        raise NotImplementedError(f"{type(self).__name__} decodes by recomputation only (use_cache=False)")

    def reorder(self, state: dict[str, Any], index: Tensor) -> None:
        """Keep batch rows ``index`` of every tensor in ``state`` (beam search)."""
        for name, value in state.items():
            if isinstance(value, Tensor):
                state[name] = value.index_select(1 if name == "h" else 0, index)

    def alignments(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        """Cross-attention weights ``(L, H, B, T, S)`` under teacher forcing (None without attention)."""
        return None


# ----------------------------------------------------------------------------------------------
# GRU encoder-decoders
# ----------------------------------------------------------------------------------------------


class RNNTranslator(Translator):
    """A bidirectional GRU encoder and a GRU decoder, with no, additive or Luong attention."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        e, h, v = config.emb_dim, config.d_model, config.vocab
        self.attention_kind = {"rnn": None, "rnn-bahdanau": "additive", "rnn-luong": "general"}[config.kind]
        self.embed = nn.Embedding(v, e, padding_idx=PAD)
        self.encoder = nn.GRU(e, h, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * h, h)
        # the decoder reads its input embedding plus a context: the fixed summary (rnn), the
        # attention context (Bahdanau), or nothing (Luong attends after the GRU)
        extra = 0 if self.attention_kind == "general" else 2 * h
        self.decoder = nn.GRU(e + extra, h, batch_first=True)
        if self.attention_kind == "additive":
            self.attn: nn.Module | None = AdditiveAttention(h, 2 * h, attn_dim=h)
        elif self.attention_kind == "general":
            self.attn = LuongAttention(h, 2 * h, method="general")
        else:
            self.attn = None
        self.combine = nn.Linear(3 * h, h)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(h, v)

    def encode(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Annotations ``(B, S, 2D)``, the decoder's first state ``(1, B, D)`` and the summary ``(B, 2D)``."""
        lengths = src_mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False)
        out, h_n = self.encoder(packed)
        memory = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])[0]  # (B, S, 2D)
        summary = torch.cat((h_n[0], h_n[1]), dim=-1)  # (B, 2D): last forward and first backward states
        return memory, torch.tanh(self.bridge(summary)).unsqueeze(0), summary

    def _decode(self, emb: Tensor, state: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Decoder steps over ``emb (B, T, E)``: pre-output ``(B, T, D)`` and weights ``(B, T, S)``."""
        memory, mask = state["memory"], state["mask"]
        if self.attention_kind is None:
            ctx = state["summary"].unsqueeze(1).expand(-1, emb.shape[1], -1)  # (B, T, 2D)
            h, state["h"] = self.decoder(torch.cat((emb, ctx), dim=-1), state["h"])  # (B, T, D)
            weights = None
        elif self.attention_kind == "general":
            h, state["h"] = self.decoder(emb, state["h"])  # (B, T, D)
            ctx, weights = self.attn(h, memory, mask=mask)  # (B, T, 2D), (B, T, S)
        else:  # additive: attend from the previous state, one step at a time
            hs, cs, ws = [], [], []
            for t in range(emb.shape[1]):
                c, w = self.attn(state["h"][0], memory, mask=mask)  # (B, 2D), (B, S)
                h_t, state["h"] = self.decoder(torch.cat((emb[:, t : t + 1], c.unsqueeze(1)), dim=-1), state["h"])
                hs.append(h_t)
                cs.append(c.unsqueeze(1))
                ws.append(w.unsqueeze(1))
            h, ctx, weights = torch.cat(hs, 1), torch.cat(cs, 1), torch.cat(ws, 1)
        pre = torch.tanh(self.combine(torch.cat((h, ctx), dim=-1)))  # (B, T, D)
        return self.drop(pre), weights

    def start(self, src: Tensor, src_mask: Tensor) -> dict[str, Any]:
        memory, h0, summary = self.encode(src, src_mask)
        return {"memory": memory, "mask": src_mask, "h": h0, "summary": summary, "weights": None}

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:
        pre, w = self._decode(self.embed(tokens).unsqueeze(1), state)  # (B, 1, D)
        state["weights"] = None if w is None else w[:, 0]  # (B, S)
        return self.out(pre[:, 0])  # (B, V)

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        state = self.start(src, src_mask)
        pre, _ = self._decode(self.drop(self.embed(tgt_in)), state)
        return self.out(pre)  # (B, T, V)

    def alignments(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        if self.attention_kind is None:
            return None
        state = self.start(src, src_mask)
        _, w = self._decode(self.embed(tgt_in), state)
        return w[None, None]  # (1, 1, B, T, S)


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------


class _Embedding(nn.Module):
    """Token embedding scaled by sqrt(D) plus sinusoidal positions; its weight is also the output layer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab, config.d_model, padding_idx=PAD)
        nn.init.normal_(self.token.weight, std=config.d_model ** -0.5)
        self.register_buffer("positions", sinusoidal_encoding(torch.arange(config.max_len), config.d_model),
                             persistent=False)
        self.scale = math.sqrt(config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        if offset + ids.shape[1] > self.positions.shape[0]:
            raise AttnKitError(f"sequence of {offset + ids.shape[1]} tokens is longer than the model's max_len "
                               f"{self.positions.shape[0]}; expected a shorter input")
        pos = self.positions[offset : offset + ids.shape[1]]  # (T, D)
        return self.drop(self.token(ids) * self.scale + pos)  # (B, T, D)

    def logits(self, h: Tensor) -> Tensor:
        return h @ self.token.weight.T  # (B, T, V)


class TransformerTranslator(Translator):
    """A pre-norm transformer encoder-decoder on :mod:`attnkit.nn`, with KV-cached decoding."""

    def __init__(self, config: ModelConfig, **attn_kwargs: Any):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = _Embedding(config)
        kind = ENCODER_ATTENTION.get(config.kind, "exact")
        enc_kwargs = dict(attn_kwargs)
        self.encoder_mask: Mask | None = None
        if kind == "sparse":
            self.encoder_mask = longformer(config.window, (0,))
        elif kind == "lsh":
            enc_kwargs.update(impl="lsh", impl_options={"bucket_size": config.bucket_size,
                                                        "n_hashes": config.n_hashes})
        enc = TransformerEncoderLayer(d, config.heads, config.ff, config.dropout, norm_first=True, **enc_kwargs)
        dec = TransformerDecoderLayer(d, config.heads, config.ff, config.dropout, norm_first=True, **attn_kwargs)
        self.encoder = TransformerEncoder(enc, config.layers, norm=nn.LayerNorm(d))
        self.decoder = TransformerDecoder(dec, config.layers, norm=nn.LayerNorm(d))

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        return self.encoder(self.embed(src), self.encoder_mask, src_key_padding_mask=~src_mask)  # (B, S, D)

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        memory = self.encode(src, src_mask)
        h = self.decoder(self.embed(tgt_in), memory, memory_key_padding_mask=~src_mask, tgt_is_causal=True)
        return self.embed.logits(h)  # (B, T, V)

    def start(self, src: Tensor, src_mask: Tensor) -> dict[str, Any]:
        n = self.config.layers
        return {"memory": self.encode(src, src_mask), "pad": ~src_mask, "caches": LayerCaches(n),
                "memory_caches": LayerCaches(n, static=True), "t": 0}

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:
        x = self.embed(tokens.unsqueeze(1), offset=state["t"])  # (B, 1, D)
        h = self.decoder(x, state["memory"], memory_key_padding_mask=state["pad"], caches=state["caches"],
                         memory_caches=state["memory_caches"])
        state["t"] += 1
        return self.embed.logits(h)[:, 0]  # (B, V)

    def reorder(self, state: dict[str, Any], index: Tensor) -> None:
        super().reorder(state, index)
        for cache in (*state["caches"], *state["memory_caches"]):
            if not cache.is_empty:
                cache.reorder(index)

    def alignments(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        with capture_attention(self) as cap:
            self(src, src_mask, tgt_in)
        cross = [r.weights for r in cap.records if (r.module or "").endswith("multihead_attn")]
        return torch.stack(cross).transpose(1, 2)  # (L, H, B, T, S)


class TorchTransformerTranslator(Translator):
    """The transformer of :class:`TransformerTranslator` built from ``torch.nn.Transformer``
    (same sizes, pre-norm, shared embedding): the reference for training throughput."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = _Embedding(config)
        self.core = nn.Transformer(d, config.heads, config.layers, config.layers, config.ff, config.dropout,
                                   batch_first=True, norm_first=True)

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], device=tgt_in.device)
        h = self.core(self.embed(src), self.embed(tgt_in), tgt_mask=causal, src_key_padding_mask=~src_mask,
                      memory_key_padding_mask=~src_mask, tgt_is_causal=True)
        return self.embed.logits(h)  # (B, T, V)


def build_model(config: ModelConfig) -> Translator:
    """The model named by ``config.kind``."""
    if config.kind.startswith("rnn"):
        return RNNTranslator(config)
    if config.kind in ENCODER_ATTENTION:
        return TransformerTranslator(config)
    return TorchTransformerTranslator(config)


def with_encoder_attention(model: TransformerTranslator, kind: str, **sizes: int) -> TransformerTranslator:
    """The same weights with the encoder's attention run another way: ``kind`` is one of the
    transformer kinds of :data:`ENCODER_ATTENTION`; ``sizes`` set ``window``, ``bucket_size``, ``n_hashes``."""
    if not isinstance(model, TransformerTranslator):
        raise AttnKitError(f"model must be a transformer translator; got {type(model).__name__}")
    if kind not in ENCODER_ATTENTION:
        raise AttnKitError(f"encoder attention kind {kind!r} is not known; "
                           f"expected one of {', '.join(ENCODER_ATTENTION)}")
    other = TransformerTranslator(replace(model.config, kind=kind, **sizes))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)
