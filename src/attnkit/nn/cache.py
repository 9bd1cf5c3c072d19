"""Key/value caches for incremental decoding.

A :class:`KVCache` holds the projected (and, with RoPE, already rotated) keys and values of one
attention layer, ``(B, Hkv, S, D)``. ``prefill`` is simply the first update with the prompt's
keys; each decoding step appends one position. The buffer grows by doubling (amortised O(1)
appends) up to an optional ``max_len``.

A *static* cache (``KVCache(static=True)``) is for cross-attention: it is filled once with the
encoder memory's keys/values and then read unchanged by every step.

A module given a (non-static) cache attends causally unless told otherwise (a mask, or
``is_causal=False``): a cache is a decoder's, and a prompt prefilled into it must not see ahead.

:class:`LayerCaches` is a list of per-layer caches for a stack of layers.

Shape legend: B batch, Hkv key/value heads, S cached positions, D head dim, Dv value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import AttnKitError, DTypeError, ShapeError

__all__ = ["KVCache", "LayerCaches"]


class KVCache:
    """Keys ``(B, Hkv, S, D)`` and values ``(B, Hkv, S, Dv)`` of past positions of one layer.

    Args:
        max_len: the most positions it may hold (None: unbounded).
        static: filled once (cross-attention memory), then only read.
    """

    def __init__(self, max_len: int | None = None, *, static: bool = False):
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise AttnKitError(f"KVCache max_len must be a positive int or None; got {max_len!r}")
        self.max_len = max_len
        self.static = static
        self._k: Tensor | None = None  # (B, Hkv, capacity, D)
        self._v: Tensor | None = None  # (B, Hkv, capacity, Dv)
        self.length = 0

    # -- queries ------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return self.length == 0

    @property
    def keys(self) -> Tensor:
        """The cached keys ``(B, Hkv, S, D)``."""
        if self._k is None:
            raise AttnKitError("KVCache is empty: run a prefill (a first forward with cache=...) before reading it")
        return self._k[:, :, : self.length]

    @property
    def values(self) -> Tensor:
        """The cached values ``(B, Hkv, S, Dv)``."""
        if self._v is None:
            raise AttnKitError("KVCache is empty: run a prefill (a first forward with cache=...) before reading it")
        return self._v[:, :, : self.length]

    # -- updates ------------------------------------------------------------------------------
    def _check(self, k: Tensor, v: Tensor) -> None:
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, Tensor) or t.dim() != 4:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ShapeError(f"KVCache.update {name} must be a 4-D tensor (B, Hkv, T, D); got {got}")
        if k.shape[:3] != v.shape[:3]:
            raise ShapeError(f"KVCache.update k {tuple(k.shape)} and v {tuple(v.shape)} must agree on (B, Hkv, T)")
        if self._k is None or self._v is None:
            return
        if self.is_empty:  # a reset buffer is reused only when it fits
            fits = (self._k.shape[:2] == k.shape[:2] and self._k.shape[3] == k.shape[3]
                    and self._v.shape[3] == v.shape[3] and self._k.dtype == k.dtype and self._k.device == k.device)
            if not fits:
                self._k = self._v = None
            return
        want_k, want_v = self._k.shape, self._v.shape
        if (k.shape[0], k.shape[1], k.shape[3]) != (want_k[0], want_k[1], want_k[3]) or v.shape[3] != want_v[3]:
            raise ShapeError(f"KVCache holds keys (B, Hkv, S, D) = ({want_k[0]}, {want_k[1]}, S, {want_k[3]}) and "
                             f"values with Dv={want_v[3]}; got k {tuple(k.shape)}, v {tuple(v.shape)}. "
                             "Use one cache per layer and per batch; call reset() to start a new sequence")
        if k.dtype != self._k.dtype or k.device != self._k.device:
            raise DTypeError(f"KVCache holds {self._k.dtype} on {self._k.device}; got k {k.dtype} on {k.device}")

    def _grow(self, need: int, k: Tensor, v: Tensor) -> None:
        """Make room for ``need`` positions (capacity doubles, capped at ``max_len``)."""
        cap = 0 if self._k is None else self._k.shape[2]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, 16)
        if self.max_len is not None:
            new_cap = min(new_cap, self.max_len)
        b, h = k.shape[:2]
        nk = k.new_empty(b, h, new_cap, k.shape[3])  # (B, Hkv, cap', D)
        nv = v.new_empty(b, h, new_cap, v.shape[3])  # (B, Hkv, cap', Dv)
        if self._k is not None and self._v is not None and self.length:
            nk[:, :, : self.length] = self._k[:, :, : self.length]
            nv[:, :, : self.length] = self._v[:, :, : self.length]
        self._k, self._v = nk, nv

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys ``(B, Hkv, T, D)`` and values ``(B, Hkv, T, Dv)``; return all of them
        ``(B, Hkv, S + T, D)``, ``(B, Hkv, S + T, Dv)``. A static cache refuses a second fill."""
        if self.static and not self.is_empty:
            raise AttnKitError("static KVCache is already filled (cross-attention memory); call reset() "
                               "before filling it with another memory")
        self._check(k, v)
        n = k.shape[2]
        if self.max_len is not None and self.length + n > self.max_len:
            raise AttnKitError(f"KVCache overflow: holds {self.length} positions, max_len={self.max_len}, "
                               f"got {n} more; create the cache with a larger max_len")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # differentiable path: concatenate instead of writing into a shared buffer
            self._k = k if self.is_empty or self._k is None else torch.cat((self.keys, k), dim=2)
            self._v = v if self.is_empty or self._v is None else torch.cat((self.values, v), dim=2)
        else:
            self._grow(self.length + n, k, v)
            assert self._k is not None and self._v is not None
            self._k[:, :, self.length: self.length + n] = k
            self._v[:, :, self.length: self.length + n] = v
        self.length += n
        return self.keys, self.values

    def reset(self) -> None:
        """Forget every position (the buffer is kept)."""
        self.length = 0
        if self.static:
            self._k = self._v = None

    def reorder(self, index: Tensor) -> None:
        """Select batch rows ``index (B',)`` (beam search reordering)."""
        if self._k is None or self._v is None:
            raise AttnKitError("KVCache.reorder on an empty cache")
        self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)

    def __repr__(self) -> str:
        shape = None if self._k is None else tuple(self.keys.shape)
        return f"KVCache(length={self.length}, max_len={self.max_len}, static={self.static}, keys={shape})"


class LayerCaches(list):
    """One :class:`KVCache` per layer of a stack: ``LayerCaches(num_layers, max_len=...)``."""

    def __init__(self, num_layers: int, max_len: int | None = None, *, static: bool = False):
        if num_layers < 1:
            raise AttnKitError(f"LayerCaches num_layers must be >= 1; got {num_layers}")
        super().__init__(KVCache(max_len, static=static) for _ in range(num_layers))

    @property
    def length(self) -> int:
        """Positions cached (the same in every layer)."""
        return self[0].length

    def reset(self) -> None:
        for c in self:
            c.reset()
