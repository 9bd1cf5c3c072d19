"""Image captioners on :mod:`attnkit.nn`: a patch encoder and a transformer decoder, with and
without attention over the image.

* ``attention`` ("show, attend and tell" with transformer layers): a convolutional patch
  embedding (three stride-2 convolutions: an ``S x S`` canvas becomes ``S/8 x S/8`` patch tokens;
  see :func:`conv_stem`), learned 2-D positions, :class:`~attnkit.nn.TransformerEncoder` layers, and a
  :class:`~attnkit.nn.TransformerDecoder` whose cross-attention reads every patch token.
* ``pooled``: the same network, but the decoder's memory is the mean of the patch tokens, one
  vector: each cross-attention has a single key (weight 1), so the decoder is conditioned on a
  mean-pooled image vector only, with no attention over image positions.

Both share the decoding interface of the translation models (``start``, ``step``, ``reorder``),
so :mod:`attnkit.apps.translation.decoding` (greedy, beam search, KV-cached) decodes them.

Words: a fixed vocabulary, the words of every class name and relation, ``a an the ,`` and the
special tokens of the translation tokenizer (``<pad> <s> </s> <unk>`` = ids 0..3).

Shape legend: B batch, S canvas side, N = (S/8)^2 patch tokens, T words, V vocabulary, E width,
L decoder layers, H heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError, ShapeError
from ...interpret import capture_attention
from ...nn import (
    LayerCaches,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    sinusoidal_encoding,
)
from ..translation.tokenizer import BOS, EOS, PAD, SPECIALS
from .data import CLASSES
from .scenes import RELATIONS
from .stems import conv_bn_stem, plain_stem

__all__ = ["CAPTION_MODELS", "WORDS", "Vocabulary", "CaptionConfig", "conv_stem", "PatchEncoder", "Captioner"]

CAPTION_MODELS = ("attention", "pooled")
WORDS = tuple(dict.fromkeys(["a", "an", "the", ","] + [w for c in CLASSES for w in c.split()]
                            + [w for r in RELATIONS for w in r.split()]))


class Vocabulary:
    """Caption text <-> ids over :data:`WORDS` (ids 0..3 are the specials)."""

    def __init__(self) -> None:
        self.itos = [*SPECIALS, *WORDS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def words(self, text: str) -> list[str]:
        """The words of ``text`` (commas are words)."""
        return text.replace(",", " , ").split()

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text``; an unknown word becomes ``<unk>``."""
        unk = self.stoi["<unk>"]
        return [self.stoi.get(w, unk) for w in self.words(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, up to the first ``</s>``; ``<pad>`` and ``<s>`` dropped."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.itos[i])
        return " ".join(out).replace(" ,", ",")


@dataclass(frozen=True)
class CaptionConfig:
    """Sizes of a captioner."""

    kind: str  # one of CAPTION_MODELS
    vocab: int  # V
    image: int = 64  # canvas side S (divisible by 8)
    d_model: int = 96  # E
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    ff: int = 192
    dropout: float = 0.0
    max_len: int = 40  # the longest caption, with </s>
    # channels of the three stride-2 conv-BN-ReLU layers of the patch stem, then a 1 x 1 convolution
    # to the width; empty: three plain stride-2 convolutions (16, 32, E channels, GELU, no norm)
    stem: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CAPTION_MODELS:
            raise AttnKitError(f"model {self.kind!r} is not known; expected one of {', '.join(CAPTION_MODELS)}")
        if self.image % 8:
            raise ShapeError(f"image side must divide by 8; got {self.image}")
        object.__setattr__(self, "stem", tuple(self.stem))
        if self.stem and (len(self.stem) != 3 or not all(isinstance(c, int) and c > 0 for c in self.stem)):
            raise AttnKitError(f"stem must be 3 positive channel counts (one per stride-2 convolution) or empty; "
                               f"got {self.stem}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_images(images: Tensor, side: int) -> None:
    """A :class:`ShapeError` unless ``images`` is ``(B, 1, side, side)``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (1, side, side):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ShapeError(f"images must be (B, 1, {side}, {side}) in [0, 1]; got {got}")


def conv_stem(d_model: int, channels: Sequence[int] = ()) -> nn.Sequential:
    """The patch stem, ``(B, 1, S, S) -> (B, E, S/8, S/8)``: three 3 x 3 stride-2 convolutions.

    With ``channels`` (three counts): conv-BN-ReLU per count, then a 1 x 1 convolution to the
    width ``E``. Empty: plain convolutions to 16, 32 and ``E`` channels with GELU between them."""
    if not channels:
        return plain_stem(d_model)
    if len(channels) != 3:
        raise AttnKitError(f"channels must hold 3 counts (one per stride-2 convolution); got {tuple(channels)}")
    return conv_bn_stem(channels, d_model)


class PatchEncoder(nn.Module):
    """``images (B, 1, S, S)`` -> patch tokens ``(B, N, E)``: the :func:`conv_stem`, learned
    positions, then ``layers`` transformer encoder layers (none: the convolutional tokens)."""

    def __init__(self, image: int, d_model: int, layers: int, heads: int, ff: int, dropout: float,
                 stem: Sequence[int] = ()):
        super().__init__()
        self.image = image
        self.stem = conv_stem(d_model, stem)
        self.grid = image // 8
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, d_model) * 0.02)
        self.encoder = None
        if layers:
            layer = TransformerEncoderLayer(d_model, heads, ff, dropout, activation="gelu", norm_first=True)
            self.encoder = TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model))

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.image)
        x = self.stem(images).flatten(2).transpose(1, 2) + self.pos  # (B, N, E)
        return x if self.encoder is None else self.encoder(x)


class Captioner(nn.Module):
    """Patch encoder + transformer decoder. ``forward(images, src_mask, tgt_in) -> logits (B, T, V)``
    (``src_mask`` is accepted for the decoding interface and ignored: every patch is real)."""

    def __init__(self, config: CaptionConfig):
        super().__init__()
        self.config = c = config
        self.encoder = PatchEncoder(c.image, c.d_model, c.enc_layers, c.heads, c.ff, c.dropout, c.stem)
        self.token = nn.Embedding(c.vocab, c.d_model, padding_idx=PAD)
        nn.init.normal_(self.token.weight, std=c.d_model ** -0.5)
        self.register_buffer("positions", sinusoidal_encoding(torch.arange(c.max_len + 1), c.d_model),
                             persistent=False)
        layer = TransformerDecoderLayer(c.d_model, c.heads, c.ff, c.dropout, activation="gelu", norm_first=True)
        self.decoder = TransformerDecoder(layer, c.dec_layers, norm=nn.LayerNorm(c.d_model))

    @property
    def attends(self) -> bool:
        """Whether the decoder attends over image positions."""
        return self.config.kind == "attention"

    def memory(self, images: Tensor) -> Tensor:
        """What the decoder reads: patch tokens ``(B, N, E)``, or their mean ``(B, 1, E)`` (pooled)."""
        tokens = self.encoder(images)  # (B, N, E)
        return tokens if self.attends else tokens.mean(1, keepdim=True)

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        if offset + ids.shape[1] > self.positions.shape[0]:
            raise AttnKitError(f"caption of {offset + ids.shape[1]} tokens is longer than max_len "
                               f"{self.config.max_len}; expected a shorter caption")
        return self.token(ids) * math.sqrt(self.config.d_model) + self.positions[offset: offset + ids.shape[1]]

    def _logits(self, h: Tensor) -> Tensor:
        return h @ self.token.weight.T  # (B, T, V)

    def forward(self, images: Tensor, src_mask: Tensor | None, tgt_in: Tensor) -> Tensor:
        h = self.decoder(self._embed(tgt_in), self.memory(images), tgt_is_causal=True)  # (B, T, E)
        return self._logits(h)

    # -- the decoding interface of attnkit.apps.translation.decoding ----------------------------
    def start(self, images: Tensor, src_mask: Tensor | None = None) -> dict[str, Any]:
        n = self.config.dec_layers
        return {"memory": self.memory(images), "caches": LayerCaches(n), "memory_caches": LayerCaches(n, static=True),
                "t": 0}

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:
        x = self._embed(tokens.unsqueeze(1), offset=state["t"])  # (B, 1, E)
        h = self.decoder(x, state["memory"], caches=state["caches"], memory_caches=state["memory_caches"])
        state["t"] += 1
        return self._logits(h)[:, 0]  # (B, V)

    def reorder(self, state: dict[str, Any], index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        state["memory"] = state["memory"].index_select(0, index)
        for cache in (*state["caches"], *state["memory_caches"]):
            if not cache.is_empty:
                cache.reorder(index)

    @torch.no_grad()
    def cross_attention(self, images: Tensor, tgt_in: Tensor) -> Tensor | None:
        """Cross-attention weights ``(L, H, B, T, N)`` of the decoder reading ``tgt_in`` (None for
        ``pooled``, whose single key always gets weight 1)."""
        if not self.attends:
            return None
        with capture_attention(self) as cap:
            self(images, None, tgt_in)
        w = [r.weights for r in cap.records if r.module and r.module.endswith("multihead_attn")]
        return torch.stack(w).transpose(1, 2)  # (L, H, B, T, N)
