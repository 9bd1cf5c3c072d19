"""Layout helpers. attnkit's canonical layout is ``(B, H, L, D)``; conversions happen here only."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["repeat_kv", "split_heads", "merge_heads", "index_broadcast", "index_grid", "as_4d"]


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Grouped-query attention: ``(B, Hkv, S, D)`` -> ``(B, Hkv * n_rep, S, D)``, each kv head
    repeated for the ``n_rep`` query heads that read it (query head h reads kv head h // n_rep)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, S, H * D)`` -> ``(B, H, S, D)``."""
    b, s, e = x.shape
    return x.view(b, s, num_heads, e // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, S, D)`` -> ``(B, S, H * D)``."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)



def index_broadcast(t: Tensor, b: Tensor, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Gather a 4-D ``(B|1, H|1, T|1, S|1)`` tensor at broadcast index tensors; size-1 dims of
    ``t`` broadcast (their index is taken as 0)."""
    t = t.to(i.device)
    idx = [x if n > 1 else torch.zeros_like(x) for x, n in zip((b, h, i, j), t.shape)]
    return t[idx[0], idx[1], idx[2], idx[3]]


def as_4d(t: Tensor) -> Tensor:
    """Prepend size-1 dims to a 2-D or 3-D tensor so it is 4-D."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def index_grid(nb: int, nh: int, i0: int, i1: int, j0: int, j1: int,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcast index tensors of a tile: ``b (nb,1,1,1)``, ``h (1,nh,1,1)``, ``i (1,1,i1-i0,1)``
    (query positions ``i0 .. i1-1``), ``j (1,1,1,j1-j0)`` (key positions ``j0 .. j1-1``)."""
    return (torch.arange(nb, device=device).view(-1, 1, 1, 1),
            torch.arange(nh, device=device).view(1, -1, 1, 1),
            torch.arange(i0, i1, device=device).view(1, 1, -1, 1),
            torch.arange(j0, j1, device=device).view(1, 1, 1, -1))
