"""Whisper (Radford et al. 2022) on :mod:`attnkit.nn`: a convolutional front end and a pre-norm
transformer encoder over 1,500 audio frames, and a causal pre-norm decoder with self-attention
(KV-cached) and cross-attention to the encoder output (a static KV cache). Every attention is an
:class:`attnkit.nn.MultiHeadAttention`.

Checkpoint keys (ours): ``encoder.conv1``, ``encoder.conv2``, ``encoder.positions``,
``encoder.layers.N.{attn_ln, attn, mlp_ln, mlp.fc1, mlp.fc2}``, ``encoder.ln_post``,
``decoder.token_embedding``, ``decoder.positions``,
``decoder.layers.N.{attn_ln, attn, cross_attn_ln, cross_attn, mlp_ln, mlp.fc1, mlp.fc2}``, ``decoder.ln``.
:func:`from_ct2` maps a CTranslate2 ``WhisperSpec`` file onto them.

Shape legend: B batch, M mel bins, F input frames (3000), S audio positions (1500), T text
tokens, E model dim, H heads, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import AttnKitError, ShapeError
from ...masks import Mask
from ...nn import KVCache, MultiHeadAttention
from .ct2 import CT2File, CT2FormatError

__all__ = ["WhisperConfig", "WhisperModel", "DecoderState", "from_ct2"]


@dataclass(frozen=True)
class WhisperConfig:
    """Sizes of a Whisper model (the defaults are tiny.en)."""

    n_mels: int = 80  # mel bins of the input
    n_audio_ctx: int = 1500  # encoder positions (30 s at 20 ms)
    n_audio_state: int = 384  # encoder width
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51864  # tokens (51864: English-only, 51865: multilingual)
    n_text_ctx: int = 448  # decoder positions
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, batch_first=True, fused_qkv=True)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: Tensor, mask: Mask | None = None, options: Mapping[str, Any] | None = None) -> Tensor:
        q, k, v = self.attn.project(self.attn_ln(x))  # (B, S, E) x 3
        out, _ = self.attn.attend(q, k, v, mask, is_causal=False, options=options)
        x = x + self.attn.o_proj(out)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Log-mel ``(B, M, F)`` -> audio states ``(B, F / 2, E)``."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        e = cfg.n_audio_state
        self.conv1 = nn.Conv1d(cfg.n_mels, e, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(e, e, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(cfg.n_audio_ctx, e))
        self.layers = nn.ModuleList(EncoderLayer(e, cfg.n_audio_head) for _ in range(cfg.n_audio_layer))
        self.ln_post = nn.LayerNorm(e)

    def forward(self, mel: Tensor, mask: Mask | None = None, options: Mapping[str, Any] | None = None) -> Tensor:
        x = F.gelu(self.conv1(mel))  # (B, E, F)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, S, E)
        if x.shape[1] > self.positions.shape[0]:
            raise ShapeError(f"mel has {mel.shape[-1]} frames, giving {x.shape[1]} audio positions; expected at most "
                             f"{self.positions.shape[0]} (30 s)")
        x = x + self.positions[: x.shape[1]]
        for layer in self.layers:
            x = layer(x, mask, options)
        return self.ln_post(x)


@dataclass
class DecoderState:
    """The KV caches of one decoding: per layer, a self-attention cache and a static cross cache."""

    self_caches: list[KVCache]
    cross_caches: list[KVCache]

    @property
    def length(self) -> int:
        return self.self_caches[0].length

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index (B',)`` of the self-attention caches (beam search)."""
        for c in self.self_caches:
            if not c.is_empty:
                c.reorder(index)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the audio, MLP; each pre-norm and residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, batch_first=True, fused_qkv=True)
        self.cross_attn_ln = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads, batch_first=True)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: Tensor, audio: Tensor | None, self_cache: KVCache | None, cross_cache: KVCache | None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = self.attn.project(self.attn_ln(x))  # (B, T, E) x 3
        out, _ = self.attn.attend(q, k, v, cache=self_cache, is_causal=True)
        x = x + self.attn.o_proj(out)
        h = self.cross_attn_ln(x)
        assert self.cross_attn.q_proj is not None
        if cross_cache is not None and not cross_cache.is_empty:
            q, k, v = self.cross_attn.q_proj(h), None, None
        else:
            if audio is None:
                raise AttnKitError("the decoder needs the audio states (B, S, E) on its first step")
            q, k, v = self.cross_attn.project(h, audio)
        out, w = self.cross_attn.attend(q, k, v, cache=cross_cache, is_causal=False, need_weights=need_weights)
        x = x + self.cross_attn.o_proj(out)
        return x + self.mlp(self.mlp_ln(x)), w


class TextDecoder(nn.Module):
    """Tokens ``(B, T)`` and audio states ``(B, S, E)`` -> logits ``(B, T, V)``."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        e = cfg.n_text_state
        self.token_embedding = nn.Embedding(cfg.n_vocab, e)
        self.positions = nn.Parameter(torch.zeros(cfg.n_text_ctx, e))
        self.layers = nn.ModuleList(DecoderLayer(e, cfg.n_text_head) for _ in range(cfg.n_text_layer))
        self.ln = nn.LayerNorm(e)

    def new_state(self) -> DecoderState:
        n = len(self.layers)
        return DecoderState([KVCache(self.positions.shape[0]) for _ in range(n)],
                            [KVCache(static=True) for _ in range(n)])

    def forward(self, tokens: Tensor, audio: Tensor | None, state: DecoderState | None = None,
                need_weights: bool = False, last_only: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Logits ``(B, T, V)`` of the next token after each of ``tokens``, and the cross-attention
        weights ``(B, H, T, S)`` per layer (empty unless ``need_weights``). With ``state``, the
        tokens continue the cached ones. ``last_only`` gives the logits ``(B, 1, V)`` of the last
        token alone (decoding: the vocabulary projection of a long prompt is skipped)."""
        offset = 0 if state is None else state.length
        t = tokens.shape[1]
        if offset + t > self.positions.shape[0]:
            raise ShapeError(f"{offset + t} text positions; the decoder has {self.positions.shape[0]}")
        x = self.token_embedding(tokens) + self.positions[offset: offset + t]  # (B, T, E)
        weights = []
        for i, layer in enumerate(self.layers):
            sc = None if state is None else state.self_caches[i]
            cc = None if state is None else state.cross_caches[i]
            x, w = layer(x, audio, sc, cc, need_weights)
            if w is not None:
                weights.append(w)
        x = self.ln(x[:, -1:] if last_only else x)
        return F.linear(x, self.token_embedding.weight), weights  # (B, T, V), tied to the embedding


class WhisperModel(nn.Module):
    """Whisper's encoder-decoder; see the module docstring for the checkpoint keys.

    Example:
        >>> m = WhisperModel(WhisperConfig(n_audio_ctx=8, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
        ...                                n_vocab=50, n_text_ctx=8, n_text_state=16, n_text_head=2, n_text_layer=1))
        >>> logits = m(torch.zeros(1, 80, 16), torch.tensor([[1, 2]]))
        >>> tuple(logits.shape)
        (1, 2, 50)
    """

    def __init__(self, cfg: WhisperConfig | None = None):
        super().__init__()
        self.config = cfg or WhisperConfig()
        self.encoder = AudioEncoder(self.config)
        self.decoder = TextDecoder(self.config)

    def embed_audio(self, mel: Tensor, mask: Mask | None = None, options: Mapping[str, Any] | None = None) -> Tensor:
        """Log-mel ``(B, M, F)`` -> audio states ``(B, S, E)``; ``mask``/``options`` go to the encoder's
        self-attention (e.g. a sliding window)."""
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ShapeError(f"mel must be (B, {self.config.n_mels}, F); got {tuple(mel.shape)}")
        return self.encoder(mel, mask, options)

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Log-mel ``(B, M, F)`` and tokens ``(B, T)`` -> logits ``(B, T, V)`` (no cache)."""
        return self.decoder(tokens, self.embed_audio(mel))[0]


def from_ct2(ct2: CT2File, dtype: torch.dtype = torch.float32) -> WhisperModel:
    """A :class:`WhisperModel` with the weights of a CTranslate2 ``WhisperSpec`` file, in ``dtype``."""
    if ct2.spec != "WhisperSpec":
        raise CT2FormatError(f"model file holds a {ct2.spec!r} model; expected 'WhisperSpec'")

    def get(name: str) -> Tensor:
        return ct2.get(name).to(dtype)

    emb = get("decoder/embeddings/weight")
    n_enc = sum(1 for n in ct2.variables if n.startswith("encoder/layer_") and n.endswith("/ffn/linear_0/weight"))
    n_dec = sum(1 for n in ct2.variables if n.startswith("decoder/layer_") and n.endswith("/ffn/linear_0/weight"))
    enc_pos, dec_pos = get("encoder/position_encodings/encodings"), get("decoder/position_encodings/encodings")
    cfg = WhisperConfig(n_mels=get("encoder/conv1/weight").shape[1], n_audio_ctx=enc_pos.shape[0],
                        n_audio_state=enc_pos.shape[1], n_audio_head=int(ct2.get("encoder/num_heads")),
                        n_audio_layer=n_enc, n_vocab=emb.shape[0], n_text_ctx=dec_pos.shape[0],
                        n_text_state=emb.shape[1], n_text_head=int(ct2.get("decoder/num_heads")), n_text_layer=n_dec)
    sd: dict[str, Tensor] = {}

    def lin(dst: str, src: str) -> None:
        sd[dst + ".weight"], sd[dst + ".bias"] = get(src + "/weight"), get(src + "/bias")

    def ln(dst: str, src: str) -> None:
        sd[dst + ".weight"], sd[dst + ".bias"] = get(src + "/gamma"), get(src + "/beta")

    lin("encoder.conv1", "encoder/conv1")
    lin("encoder.conv2", "encoder/conv2")
    sd["encoder.positions"] = enc_pos
    ln("encoder.ln_post", "encoder/layer_norm")
    for i in range(n_enc):
        p, s = f"encoder.layers.{i}", f"encoder/layer_{i}"
        ln(f"{p}.attn_ln", f"{s}/self_attention/layer_norm")
        lin(f"{p}.attn.qkv_proj", f"{s}/self_attention/linear_0")  # rows q, k, v
        lin(f"{p}.attn.o_proj", f"{s}/self_attention/linear_1")
        ln(f"{p}.mlp_ln", f"{s}/ffn/layer_norm")
        lin(f"{p}.mlp.fc1", f"{s}/ffn/linear_0")
        lin(f"{p}.mlp.fc2", f"{s}/ffn/linear_1")
    sd["decoder.token_embedding.weight"] = emb
    sd["decoder.positions"] = dec_pos
    ln("decoder.ln", "decoder/layer_norm")
    for i in range(n_dec):
        p, s = f"decoder.layers.{i}", f"decoder/layer_{i}"
        ln(f"{p}.attn_ln", f"{s}/self_attention/layer_norm")
        lin(f"{p}.attn.qkv_proj", f"{s}/self_attention/linear_0")
        lin(f"{p}.attn.o_proj", f"{s}/self_attention/linear_1")
        ln(f"{p}.cross_attn_ln", f"{s}/attention/layer_norm")
        lin(f"{p}.cross_attn.q_proj", f"{s}/attention/linear_0")
        w, b = get(f"{s}/attention/linear_1/weight"), get(f"{s}/attention/linear_1/bias")  # rows k, v
        e = cfg.n_text_state
        sd[f"{p}.cross_attn.k_proj.weight"], sd[f"{p}.cross_attn.v_proj.weight"] = w[:e], w[e:]
        sd[f"{p}.cross_attn.k_proj.bias"], sd[f"{p}.cross_attn.v_proj.bias"] = b[:e], b[e:]
        lin(f"{p}.cross_attn.o_proj", f"{s}/attention/linear_2")
        ln(f"{p}.mlp_ln", f"{s}/ffn/layer_norm")
        lin(f"{p}.mlp.fc1", f"{s}/ffn/linear_0")
        lin(f"{p}.mlp.fc2", f"{s}/ffn/linear_1")
    model = WhisperModel(cfg).to(dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CT2FormatError(f"model file does not map onto Whisper: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model.eval()
