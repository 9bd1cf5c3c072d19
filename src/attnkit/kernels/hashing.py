"""Angular LSH buckets on the native extension: one parallel pass that projects blocks of rows
into a buffer kept in cache and reduces it there (:func:`native_buckets`), the same assignment as
``argmax([xR, -xR])`` computed with torch (ties: the first index; a row with a NaN projection: the
first NaN's index + half).

Shape legend: N rows, D dim, R rounds, half = n_buckets / 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native_module, native_ready

__all__ = ["native_buckets", "native_hashing_usable"]


def native_hashing_usable(x: Tensor) -> bool:
    """Whether :func:`native_buckets` can hash ``x``: a CPU float32 / float64 tensor and the
    extension available (built on first use)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and native_ready()


def native_buckets(x: Tensor, rotations: Tensor) -> Tensor:
    """Buckets ``(N, R)`` int64 of the rows of ``x (N, D)`` under ``rotations (D, R, half)``:
    ``argmax`` over ``[x r, -x r]`` of each round's projections ``r``."""
    d, rounds, half = rotations.shape
    rot = rotations.to(dtype=x.dtype).reshape(d, rounds * half).contiguous()
    return native_module().hash_buckets(x.contiguous(), rot, rounds)
