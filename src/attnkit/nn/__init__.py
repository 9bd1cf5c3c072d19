"""Attention modules: drop-in ``MultiHeadAttention``, KV caches, positions (RoPE, ALiBi,
sinusoidal), recurrent encoder-decoder attention and Transformer layers, all over
:func:`attnkit.attention`."""

from .attention import MultiHeadAttention, torch_masks_to_attnkit
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
