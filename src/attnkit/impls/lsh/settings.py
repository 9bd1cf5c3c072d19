"""LSH attention's options, validated settings and result type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ...errors import AttnKitError
from .._common import Option

__all__ = ["OPTIONS", "LSHSettings", "LSHResult", "settings_from_options"]


def _one_or_even(n_buckets: int) -> str | None:
    if n_buckets > 1 and n_buckets % 2:
        return "must be 1 or even (angular LSH uses [xR, -xR])"
    return None


OPTIONS: dict[str, Option] = {
    "bucket_size": Option(int, 64, "chunk length: a query attends the keys of its chunk and the one before",
                          minimum=1),
    "n_buckets": Option(int, None, "buckets per round, 1 or even; None: items / bucket_size rounded to even",
                        minimum=1, check=_one_or_even),
    "n_hashes": Option(int, 4, "hash rounds, combined by log-sum-exp", minimum=1),
    "shared_qk": Option(bool, False, "keys are the L2-normalised queries (the Reformer); needs T == S"),
    "seed": Option(int, 0, "seed of the random rotations when no generator is given", minimum=0),
    "dedup": Option(bool, True, "count a key that several rounds attend once"),
    "kernel": Option(str, "auto", "who computes the chunks: 'auto' (CUDA tensors: the Triton kernels where triton "
                     "is installed; CPU tensors: the native C++ kernel where it is available, from 2**20 score "
                     "elements over all rounds; both for calls without weights whose mask is causal and / or key "
                     "padding), 'triton' (the Triton kernels, or an error saying why not), 'torch' (always "
                     "PyTorch)", choices=("auto", "torch", "triton")),
    "triton_rows": Option(str, "copy", "how the Triton rounds reach the sorted items: 'copy' (sorted copies of q, k "
                          "and v, their gradients scattered back: the route measured on a GPU) or 'indexed' (the "
                          "kernels read and write rows through the sort order; no copies)",
                          choices=("copy", "indexed")),
}


@dataclass(frozen=True)
class LSHSettings:
    """Validated LSH settings (see the module docstring and :data:`OPTIONS`); a bad value raises
    :class:`AttnKitError` naming it."""

    bucket_size: int = OPTIONS["bucket_size"].default
    n_buckets: int | None = OPTIONS["n_buckets"].default  # None: items // bucket_size, rounded to even
    n_hashes: int = OPTIONS["n_hashes"].default
    shared_qk: bool = OPTIONS["shared_qk"].default
    seed: int = OPTIONS["seed"].default
    dedup: bool = OPTIONS["dedup"].default
    kernel: str = OPTIONS["kernel"].default
    triton_rows: str = OPTIONS["triton_rows"].default

    def __post_init__(self):
        for f in fields(self):
            OPTIONS[f.name].parse("lsh", f.name, getattr(self, f.name))

    def buckets_for(self, n_items: int) -> int:
        """The number of buckets used for ``n_items`` sorted items."""
        if self.n_buckets is not None:
            return self.n_buckets
        n = max(2, n_items // self.bucket_size)
        return n + (n % 2)


@dataclass(frozen=True)
class LSHResult:
    """Output ``(B, H, T, Dv)`` and, when asked, the keys each query attended and its log-sum-exp.

    ``indices`` ``(B, H, T, K)``: key positions (``-1`` = no key in that slot, ``K = R * 2C``);
    ``values`` ``(B, H, T, K)``: the weight each slot contributed (a key attended in several
    rounds appears several times; its weights sum to its softmax weight over the union);
    ``lse`` ``(B, H, T)``: the log-sum-exp of each query's scores over the keys it attended
    (float32, float64 for float64 inputs; ``-inf`` for a query with none).
    """

    out: Tensor
    indices: Tensor | None = None
    values: Tensor | None = None
    lse: Tensor | None = None

    def dense_weights(self, num_keys: int) -> Tensor:
        """The weights as a dense ``(B, H, T, S)`` tensor (zeros on keys not attended)."""
        if self.indices is None or self.values is None:
            raise AttnKitError("dense_weights needs an LSHResult computed with return_weights=True")
        idx = self.indices.clamp(min=0)  # (B, H, T, K)
        vals = torch.where(self.indices >= 0, self.values, torch.zeros((), dtype=self.values.dtype))
        dense = torch.zeros(*idx.shape[:3], num_keys, dtype=vals.dtype, device=vals.device)
        return dense.scatter_add(-1, idx, vals)


def settings_from_options(options: Mapping[str, Any]) -> LSHSettings:
    """The ``lsh`` options of ``attention(..., options=...)`` as :class:`LSHSettings`; raises
    :class:`AttnKitError` naming an unknown or bad option."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise AttnKitError(f"unknown lsh options {unknown}; accepted: {sorted(OPTIONS)}")
    return LSHSettings(**options)
