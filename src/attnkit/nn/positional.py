"""Position information for attention modules: rotary embeddings (RoPE), sinusoidal encodings
and ALiBi score modifiers.

* :class:`RotaryEmbedding` rotates pairs of query/key channels by an angle proportional to the
  token position (Su et al. 2021), so ``q_i . k_j`` depends on positions only through ``i - j``.
  The half-split channel layout (channel ``c`` pairs with ``c + D/2``) is used, as in GPT-NeoX
  and Llama. ``scaling`` stretches the context: ``"linear"`` divides positions by ``factor``
  (position interpolation, Chen et al. 2023), ``"ntk"`` raises the base instead.
* :func:`sinusoidal_encoding` / :class:`SinusoidalPositionalEncoding`: the fixed sin/cos table of
  Vaswani et al. 2017, added to token embeddings.
* :func:`alibi_mod`: ALiBi (Press et al. 2022) as a score modifier, head slopes from
  :func:`attnkit.scores.alibi_slopes`.

Shape legend: B batch, H heads, T positions, D head dim, E model dim.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .. import scores
from ..errors import AttnKitError, ShapeError

__all__ = [
    "RotaryEmbedding",
    "rotate_half",
    "apply_rotary",
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "alibi_mod",
]

Scaling = Literal["linear", "ntk"]


def rotate_half(x: Tensor) -> Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x (B, H, T, D)`` by angles whose ``cos``/``sin`` are ``(T, D)`` or ``(B, 1, T, D)``."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for a head dim ``dim`` (even).

    Args:
        dim: head dim D (channels rotated; must be even).
        base: the wavelength base (10000 in the paper; larger bases give longer wavelengths).
        scaling: ``None``, ``"linear"`` (positions / factor) or ``"ntk"`` (base * factor^(D/(D-2))).
        factor: context stretch factor used by ``scaling`` (>= 1).

    ``rope(x, positions)`` with ``x (B, H, T, D)`` and integer ``positions`` ``(T,)`` or ``(B, T)``
    returns the rotated ``x``.
    """

    inv_freq: Tensor

    def __init__(self, dim: int, base: float = 10000.0, scaling: Scaling | None = None, factor: float = 1.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ShapeError(f"RotaryEmbedding dim must be an even number >= 2; got dim={dim}")
        if not base > 1:
            raise AttnKitError(f"RotaryEmbedding base must be > 1; got base={base!r}")
        if scaling not in (None, "linear", "ntk"):
            raise AttnKitError(f"RotaryEmbedding scaling must be None, 'linear' or 'ntk'; got {scaling!r}")
        if not factor >= 1:
            raise AttnKitError(f"RotaryEmbedding factor must be >= 1; got factor={factor!r}")
        self.dim, self.base, self.scaling, self.factor = dim, float(base), scaling, float(factor)
        eff_base = self.base * self.factor ** (dim / (dim - 2)) if scaling == "ntk" and dim > 2 else self.base
        inv_freq = eff_base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def angles(self, positions: Tensor) -> Tensor:
        """Rotation angles ``(..., T, D)`` for integer ``positions (..., T)`` (halves repeated)."""
        pos = positions.to(torch.float32)
        if self.scaling == "linear":
            pos = pos / self.factor
        freqs = pos.unsqueeze(-1) * self.inv_freq.to(pos.device)  # (..., T, D/2)
        return torch.cat((freqs, freqs), dim=-1)  # (..., T, D)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x (B, H, T, D)`` to ``positions`` ``(T,)`` or ``(B, T)``."""
        if x.shape[-1] != self.dim:
            raise ShapeError(f"RotaryEmbedding(dim={self.dim}) got x of shape {tuple(x.shape)}; "
                             f"expected last dim {self.dim}")
        if positions.shape[-1] != x.shape[-2] or positions.dim() not in (1, 2):
            raise ShapeError(f"rotary positions must be (T,) or (B, T) with T={x.shape[-2]}; got shape "
                             f"{tuple(positions.shape)}")
        ang = self.angles(positions)  # (T, D) or (B, T, D)
        if ang.dim() == 3:
            ang = ang.unsqueeze(1)  # (B, 1, T, D)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        return apply_rotary(x, cos, sin)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, scaling={self.scaling}, factor={self.factor}"


def sinusoidal_encoding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """The sinusoidal table of Vaswani et al. 2017 at ``positions (T,)``: ``(T, dim)`` with
    ``PE[p, 2i] = sin(p / base^(2i/dim))`` and ``PE[p, 2i+1] = cos(p / base^(2i/dim))``."""
    if dim < 2 or dim % 2:
        raise ShapeError(f"sinusoidal encoding dim must be an even number >= 2; got dim={dim}")
    pos = positions.to(torch.float64).unsqueeze(-1)  # (T, 1)
    inv = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    pe = torch.empty(*positions.shape, dim, dtype=torch.float64)
    pe[..., 0::2] = torch.sin(pos * inv)
    pe[..., 1::2] = torch.cos(pos * inv)
    return pe.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the sinusoidal table to ``x (B, T, E)``; ``offset`` shifts positions (for decoding)."""

    def __init__(self, dim: int, base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        sinusoidal_encoding(torch.zeros(1), dim, base)  # validates dim
        self.dim, self.base = dim, base
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ShapeError(f"SinusoidalPositionalEncoding(dim={self.dim}) expects x (B, T, {self.dim}); "
                             f"got shape {tuple(x.shape)}")
        pos = torch.arange(offset, offset + x.shape[1], device=x.device)
        return self.dropout(x + sinusoidal_encoding(pos, self.dim, self.base).to(x.device, x.dtype))


def alibi_mod(num_heads: int) -> scores.ScoreMod:
    """ALiBi for ``num_heads`` heads: adds ``-m_h |i' - j|`` with the slopes of Press et al. 2022."""
    return scores.alibi(scores.alibi_slopes(num_heads))
