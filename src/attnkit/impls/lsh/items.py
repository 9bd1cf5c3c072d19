"""Hashing and sorting: the rotations, the buckets, the items that get sorted (queries and keys,
with their positions) and the sorted order of every round.

Shape legend: BH batch x heads, T queries, S keys, D head dim, Dv value dim, N sorted items,
nC chunks, C chunk length, R hash rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...kernels.hashing import native_buckets, native_hashing_usable

__all__ = ["random_rotations", "hash_vectors"]

_HASH_BUDGET = 1 << 18  # projections computed at once (kept in cache)
_HASH_BUDGET_CUDA = 1 << 26  # on a GPU: 256 MB of float32 projections per product


def random_rotations(head_dim: int, n_hashes: int, n_buckets: int, *, generator: torch.Generator | None = None,
                     seed: int = 0) -> Tensor:
    """Gaussian random projections ``(D, R, n_buckets // 2)`` (float32, CPU), from ``generator``
    when given, else from ``seed``.

    The values are rounded to bfloat16 (and kept in float32): a GPU then projects half-precision
    inputs with its matrix units exactly (bf16 x bf16 products are exact in float32), so the
    fused Triton hashing assigns the buckets float32 arithmetic does, ties of the summation
    order aside."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    rot = torch.randn(head_dim, n_hashes, max(1, n_buckets // 2), generator=g, device=g.device)
    return rot.bfloat16().float()


def hash_vectors(x: Tensor, rotations: Tensor, n_buckets: int) -> Tensor:
    """Angular LSH buckets of ``x (BH, N, D)``: ``argmax([xR, -xR])`` per round -> ``(BH, R, N)``
    int64 in ``[0, n_buckets)``. With one bucket everything lands in bucket 0.

    Every round is projected by one product, a few hundred rows at a time, so that the
    projections are reduced while they are still in cache; on the native extension when it is
    available (one parallel pass, the same assignment)."""
    bh, n, d = x.shape
    n_hashes, half = rotations.shape[1], rotations.shape[2]
    if n_buckets == 1:
        return torch.zeros(bh, n_hashes, n, dtype=torch.int64, device=x.device)
    if native_hashing_usable(x):
        return native_buckets(x.reshape(bh * n, d), rotations).view(bh, n, n_hashes).transpose(1, 2).contiguous()
    rot = rotations.to(device=x.device, dtype=x.dtype).reshape(d, n_hashes * half)  # (D, R * nb/2)
    flat = x.reshape(bh * n, d)
    out = torch.empty(bh * n, n_hashes, dtype=torch.int64, device=x.device)
    budget = _HASH_BUDGET_CUDA if x.is_cuda else _HASH_BUDGET  # a GPU wants few, large products
    step = max(1, budget // (n_hashes * half))
    for start in range(0, bh * n, step):
        proj = (flat[start:start + step] @ rot).view(-1, n_hashes, half)  # (rows, R, nb/2)
        top, arg_top = proj.max(-1)  # (rows, R): argmax of [xR, -xR] without building it
        low, arg_low = proj.min(-1)
        out[start:start + step] = torch.where(top >= -low, arg_top, arg_low + half)
    return out.view(bh, n, n_hashes).transpose(1, 2).contiguous()


@dataclass(frozen=True)
class _Items:
    """What is sorted: ``N`` items (+1 dummy at index N used for padding chunks).

    Rows ``qv (BH, N+1, D)`` query vectors, ``kv (BH, N+1, D)`` key vectors, ``vv (BH, N+1, Dv)``;
    ``qpos``/``kpos (N+1,)`` query/key position of each item (-1: not a query/key);
    ``time (N,)`` position used to order items within a bucket; ``hashed (BH, N, D)``.
    """

    qv: Tensor
    kv: Tensor
    vv: Tensor
    qpos: Tensor
    kpos: Tensor
    time: Tensor
    hashed: Tensor
    n: int


def _pad_dummy(x: Tensor) -> Tensor:
    """Append one zero row (the dummy item) along dim 1."""
    return F.pad(x, (0, 0, 0, 1))


def _items(q: Tensor, k: Tensor, v: Tensor, shared_qk: bool) -> _Items:
    """Items for ``q (BH, T, D)``, ``k (BH, S, D)``, ``v (BH, S, Dv)``."""
    t, s, dev = q.shape[1], k.shape[1], q.device
    minus = torch.full((1,), -1, dtype=torch.int64, device=dev)
    if shared_qk:
        pos = torch.arange(t, device=dev)
        keys = F.normalize(q, dim=-1)  # (BH, T, D)
        return _Items(_pad_dummy(q), _pad_dummy(keys), _pad_dummy(v), torch.cat([pos, minus]),
                      torch.cat([pos, minus]), pos, q, t)
    off = s - t  # query i sits at key position i + off (bottom-right alignment)
    qpos, kpos = torch.arange(t, device=dev), torch.arange(s, device=dev)
    none_t, none_s = torch.full((t,), -1, device=dev), torch.full((s,), -1, device=dev)
    qtime, ktime = qpos + off, kpos
    shift = min(0, off)
    return _Items(
        qv=_pad_dummy(torch.cat([q, torch.zeros_like(k)], dim=1)),
        kv=_pad_dummy(torch.cat([torch.zeros_like(q), k], dim=1)),
        vv=_pad_dummy(torch.cat([v.new_zeros(v.shape[0], t, v.shape[2]), v], dim=1)),
        qpos=torch.cat([qpos, none_s, minus]),
        kpos=torch.cat([none_t, kpos, minus]),
        time=torch.cat([2 * (qtime - shift), 2 * (ktime - shift) + 1]),  # queries before keys at a tie
        hashed=torch.cat([q, k], dim=1),
        n=t + s,
    )


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x (BH, M, E)`` gathered at ``idx (BH, ...)`` -> ``(BH, ..., E)``."""
    flat = idx.reshape(idx.shape[0], -1)  # (BH, n)
    out = x.gather(1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (BH, n, E)
    return out.view(*idx.shape, x.shape[-1])


def _look_one_back(x: Tensor, chunk: int) -> Tensor:
    """Key side of every chunk: the chunk before it (cyclically) followed by the chunk itself.

    ``x (BH, nC*C[, E])`` in sorted order -> a view ``(BH, nC, K[, E])`` with ``K = 2C`` (``K = C``
    when there is one chunk). Built as overlapping windows of one buffer, without copying the
    windows."""
    if x.shape[1] == chunk:
        return x.view(x.shape[0], 1, *x.shape[1:])
    buf = torch.cat([x[:, -chunk:], x], dim=1)  # (BH, (nC+1)*C[, E])
    win = buf.unfold(1, 2 * chunk, chunk)  # (BH, nC[, E], 2C)
    return win if x.dim() == 2 else win.transpose(-1, -2)


def _sort_orders(items: _Items, buckets: Tensor, n_buckets: int, n_chunks: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Sort the items by ``(bucket, time)`` in every round.

    Returns the sorted item ids padded with the dummy ``(BH, R, nC*C)`` and the sorted slot
    (rank) of every item ``(BH, R, N)``."""
    n = items.n
    span = 2 * int(items.time.max()) + 2
    key = buckets * span + items.time  # (BH, R, N) unique per round, below n_buckets * span
    if n_buckets * span < 2**31:  # int32 keys sort in half the passes
        key = key.to(torch.int32)
    order = key.argsort(dim=-1)  # (BH, R, N)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(n, device=order.device).expand_as(order))
    return F.pad(order, (0, n_chunks * chunk - n), value=n), rank


def _slots(bh: int, slots: int, device: torch.device) -> Tensor:
    """Row offset of each batch-head in a flattened ``(BH * slots, E)`` tensor, ``(BH, 1)``."""
    return (torch.arange(bh, device=device) * slots).view(-1, 1)
