"""Small private helpers shared across modules."""

from __future__ import annotations

import torch
from torch import Tensor


def index_broadcast(t: Tensor, b: Tensor, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Gather a 4-D ``(B|1, H|1, T|1, S|1)`` tensor at broadcast index tensors; size-1 dims of
    ``t`` broadcast (their index is taken as 0)."""
    t = t.to(i.device)
    idx = [x if n > 1 else torch.zeros_like(x) for x, n in zip((b, h, i, j), t.shape)]
    return t[idx[0], idx[1], idx[2], idx[3]]


def as_4d(t: Tensor) -> Tensor:
    """Prepend size-1 dims to a 2-D or 3-D tensor so it is 4-D."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
