"""Layout helpers. attnkit's canonical layout is ``(B, H, L, D)``; conversions happen here only."""

from __future__ import annotations

from torch import Tensor

__all__ = ["repeat_kv", "bshd_to_bhsd", "bhsd_to_bshd", "split_heads", "merge_heads"]


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Grouped-query attention: ``(B, Hkv, S, D)`` -> ``(B, Hkv * n_rep, S, D)``, each kv head
    repeated for the ``n_rep`` query heads that read it (query head h reads kv head h // n_rep)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def bshd_to_bhsd(x: Tensor) -> Tensor:
    """``(B, S, H, D)`` -> ``(B, H, S, D)``."""
    return x.transpose(1, 2)


def bhsd_to_bshd(x: Tensor) -> Tensor:
    """``(B, H, S, D)`` -> ``(B, S, H, D)``."""
    return x.transpose(1, 2)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, S, H * D)`` -> ``(B, H, S, D)``."""
    b, s, e = x.shape
    return x.view(b, s, num_heads, e // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, S, D)`` -> ``(B, S, H * D)``."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)
