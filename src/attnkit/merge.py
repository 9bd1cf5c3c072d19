"""Combining attention computed over disjoint sets of keys.

Softmax attention over keys ``K = K_1 u K_2 u ...`` (disjoint) is a weighted sum of the partial
results: with each part's output ``o_i`` and log-sum-exp ``l_i`` (``attention(..., return_lse=True)``),
``l = log(sum_i exp(l_i))`` and ``o = sum_i exp(l_i - l) * o_i``. This is how split-key kernels,
ring attention and KV caches held in pieces combine their pieces, exactly, forward and backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import AttnKitError, DTypeError, ShapeError

__all__ = ["merge_partials"]


def merge_partials(parts: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Merge partial attention results ``[(out_i, lse_i), ...]`` over disjoint key sets.

    Args:
        parts: pairs of ``out_i (B, H, T, Dv)`` and ``lse_i (B, H, T)`` as returned by
            ``attnkit.attention(..., return_lse=True)`` for each key set (same queries).

    Returns:
        ``(out (B, H, T, Dv), lse (B, H, T))``: what attention over the union of the key sets
        returns. A row with no allowed key in any part (every ``lse_i = -inf``) gets a zero output
        and ``lse = -inf``, with zero gradient. Differentiable in every ``out_i`` and ``lse_i``.

    Example:
        >>> import torch, attnkit
        >>> q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
        >>> a = attnkit.attention(q, k[:, :, :3], v[:, :, :3], return_lse=True)
        >>> b = attnkit.attention(q, k[:, :, 3:], v[:, :, 3:], return_lse=True)
        >>> out, lse = attnkit.merge_partials([a, b])
        >>> torch.allclose(out, attnkit.attention(q, k, v), atol=1e-6)
        True

    Shape legend: B batch, H heads, T queries, Dv value dim.
    """
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or len(parts) == 0:
        raise AttnKitError(f"parts must be a non-empty list of (out, lse) pairs; got {parts!r:.80}")
    outs, lses = [], []
    for n, part in enumerate(parts):
        if not (isinstance(part, (tuple, list)) and len(part) == 2
                and all(isinstance(t, Tensor) for t in part)):
            raise AttnKitError(f"parts[{n}] must be a pair (out, lse) of tensors; got {type(part).__name__}")
        out, lse = part
        if out.dim() != 4 or tuple(lse.shape) != tuple(out.shape[:3]):
            raise ShapeError(f"parts[{n}]: out must be (B, H, T, Dv) and lse (B, H, T); got out "
                             f"{tuple(out.shape)}, lse {tuple(lse.shape)}")
        if not out.is_floating_point() or not lse.is_floating_point():
            raise DTypeError(f"parts[{n}]: out and lse must be floating tensors; got {out.dtype}, {lse.dtype}")
        if outs and (out.shape != outs[0].shape or out.device != outs[0].device):
            raise ShapeError(f"parts[{n}]: out {tuple(out.shape)} on {out.device} differs from parts[0] "
                             f"{tuple(outs[0].shape)} on {outs[0].device}; expected the same queries")
        outs.append(out)
        lses.append(lse)
    acc = torch.float64 if any(t.dtype == torch.float64 for t in lses) else torch.float32
    lse_all = torch.stack([t.to(acc) for t in lses])  # (P, B, H, T)
    alive = (lse_all != -math.inf).any(0)  # (B, H, T)
    safe = torch.where(alive, lse_all, 0.0)  # dead rows: finite stand-ins (no NaN in the gradient)
    # each part's share relative to the largest lse (not to the total): exp(l_i - l) loses l's
    # rounding (about 0.01 at |l| = 1e5 in float32) where exp(l_i - max) stays exact
    top = safe.detach().amax(0)  # (B, H, T); the result does not depend on it
    rel = torch.exp(safe - top)  # (P, B, H, T), the largest is 1
    den = rel.sum(0)
    total = top + torch.log(den)  # (B, H, T)
    coef = rel / den  # (P, B, H, T) share of each part
    coef = torch.where(alive, coef, 0.0)
    out = sum(c.unsqueeze(-1) * o.to(acc) for c, o in zip(coef, outs))  # (B, H, T, Dv)
    return out.to(outs[0].dtype), torch.where(alive, total, -math.inf)
