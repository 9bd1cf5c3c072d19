"""Attention modules: ``MultiHeadAttention`` (a drop-in for ``torch.nn.MultiheadAttention``),
KV caches, positions (RoPE, ALiBi, sinusoidal), recurrent encoder-decoder attention and
transformer layers, all over :func:`attnkit.attention`. PyTorch's conventions are converted in
:mod:`attnkit.nn.torch_compat`."""

from .attention import MultiHeadAttention
from .cache import KVCache, LayerCaches
from .positional import (
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_mod,
    apply_rotary,
    rotate_half,
    sinusoidal_encoding,
)
from .recurrent import AdditiveAttention, LuongAttention, Seq2SeqRNN
from .torch_compat import torch_masks_to_attnkit
from .transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerLM,
)

__all__ = [
    "MultiHeadAttention",
    "torch_masks_to_attnkit",
    "KVCache",
    "LayerCaches",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "alibi_mod",
    "apply_rotary",
    "rotate_half",
    "sinusoidal_encoding",
    "AdditiveAttention",
    "LuongAttention",
    "Seq2SeqRNN",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "TransformerLM",
]
