"""``lsh``: Reformer attention (Kitaev et al. 2020), an approximation (never chosen by ``auto``).

Queries and keys are hashed with angular LSH (random rotations ``R``; bucket = argmax of
``[xR, -xR]``), sorted by ``(bucket, position)`` and cut into chunks of ``bucket_size``; each
query attends the keys of its own chunk and of the previous one (look-one-back). ``n_hashes``
rounds are combined by the log-sum-exp of their scores, and a key that several rounds attend is
counted once (``dedup``), so the output is softmax attention restricted to the *union* of the
keys the rounds found. Cost: O(n_hashes * T * bucket_size * D) time, no T x S buffer.

Two modes:

* ``shared_qk=True`` (the Reformer): keys are the L2-normalised queries (``k`` is ignored,
  ``T == S``); one sort per round serves queries and keys. A query does not attend to itself
  unless no other key is available (its self-score is replaced by -1e5).
* ``shared_qk=False`` (default): queries and keys are hashed with the same rotations and sorted
  *together*, so that a query lands next to the keys of its bucket; chunks then mix queries and
  keys (about 4x the score work of the shared mode at ``T == S``).

Masks: causal and key padding (``padding``, ``from_key_padding``) and their ``&``; positions are
carried through the sort and the mask is evaluated on them. Randomness: rotations come from
``generator`` when given, else from ``seed`` (default 0), so a call is deterministic.

Options (``attention(..., impl="lsh", options={...})``, declared in :data:`OPTIONS`):
``bucket_size`` (chunk length, default 64), ``n_buckets`` (default: items / bucket_size,
rounded to an even number; 1 = a single bucket), ``n_hashes`` (default 4), ``shared_qk``
(default False), ``seed`` (default 0), ``dedup`` (default True).

Non-finite values: a NaN or infinite query, or key or value that a query attends in some round,
reaches that query's output (NaN), as in exact attention; which queries attend a key depends on
the buckets. Keys hidden by a key-side mask (padding, key mask) are zeroed before any arithmetic,
so whatever they hold never reaches an output or a gradient.

``return_lse`` gives each query's log-sum-exp over the keys its rounds attended, the normaliser
of its output (a key counted once with ``dedup``, once per round that found it without), so
:func:`attnkit.merge_partials` merges lsh results over disjoint key sets into attention over the
union of the keys each part attended.

Shape legend: B batch, H heads, T queries, S keys, D head dim, Dv value dim, N sorted items,
nC chunks, C chunk length, R hash rounds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall, hide_masked_keys
from ..errors import AttnKitError
from ..kernels.tiles import HashedItems, KernelMod, kernel_usable, tile_attention
from ..masks import And, BlockSparse, Causal, Full, KeyMask, Mask, Padding
from ..merge import merge_partials
from ..registry import AttnResult, ImplSpec, register_impl
from ..shapes import repeat_kv
from ._common import Option, compute_dtype, read_options

__all__ = ["LSHSettings", "LSHResult", "settings_from_options", "random_rotations", "hash_vectors",
           "lsh_attention", "lsh"]

SELF_SCORE = -1e5  # replaces q_i . k_i in shared-QK mode: used only when nothing else is allowed
_HASH_BUDGET = 1 << 18  # projections computed at once (kept in cache)


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
    "kernel": Option(str, "auto", "who computes the chunks: 'auto' (the native C++ kernel where it is available, "
                     "for calls without weights whose mask is causal and / or key padding, and at least 2**20 "
                     "score elements over all rounds), 'torch' (always PyTorch)", choices=("auto", "torch")),
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


# ----------------------------------------------------------------------------------------------
# hashing
# ----------------------------------------------------------------------------------------------


def random_rotations(head_dim: int, n_hashes: int, n_buckets: int, *, generator: torch.Generator | None = None,
                     seed: int = 0) -> Tensor:
    """Gaussian random projections ``(D, R, n_buckets // 2)`` (float32, CPU), from ``generator``
    when given, else from ``seed``."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    return torch.randn(head_dim, n_hashes, max(1, n_buckets // 2), generator=g, device=g.device)


def hash_vectors(x: Tensor, rotations: Tensor, n_buckets: int) -> Tensor:
    """Angular LSH buckets of ``x (BH, N, D)``: ``argmax([xR, -xR])`` per round -> ``(BH, R, N)``
    int64 in ``[0, n_buckets)``. With one bucket everything lands in bucket 0.

    Every round is projected by one product, a few hundred rows at a time, so that the
    projections are reduced while they are still in cache."""
    bh, n, d = x.shape
    n_hashes, half = rotations.shape[1], rotations.shape[2]
    if n_buckets == 1:
        return torch.zeros(bh, n_hashes, n, dtype=torch.int64, device=x.device)
    rot = rotations.to(device=x.device, dtype=x.dtype).reshape(d, n_hashes * half)  # (D, R * nb/2)
    flat = x.reshape(bh * n, d)
    out = torch.empty(bh * n, n_hashes, dtype=torch.int64, device=x.device)
    step = max(1, _HASH_BUDGET // (n_hashes * half))
    for start in range(0, bh * n, step):
        proj = (flat[start:start + step] @ rot).view(-1, n_hashes, half)  # (rows, R, nb/2)
        top, arg_top = proj.max(-1)  # (rows, R): argmax of [xR, -xR] without building it
        low, arg_low = proj.min(-1)
        out[start:start + step] = torch.where(top >= -low, arg_top, arg_low + half)
    return out.view(bh, n, n_hashes).transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# the items that get sorted
# ----------------------------------------------------------------------------------------------


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


def _allowed(mask: Mask | None, heads: int, lq: int, lk: int, qpos: Tensor, kpos: Tensor,
             check_real: bool = True) -> Tensor:
    """Which (row, col) pairs may attend: both real (when ``check_real``), and allowed by ``mask``.

    ``qpos (BH, nC, C)`` and ``kpos (BH, nC, K)`` positions (-1: not a query / not a key)
    -> bool ``(BH, nC, C, K)``."""
    ok = (qpos >= 0).unsqueeze(-1) & (kpos >= 0).unsqueeze(-2) if check_real else None  # (BH, nC, C, K)
    if mask is None:
        return ok
    bh = torch.arange(qpos.shape[0], device=qpos.device).view(-1, 1, 1, 1)
    i = qpos.clamp(min=0).unsqueeze(-1)  # (BH, nC, C, 1)
    j = kpos.clamp(min=0).unsqueeze(-2)  # (BH, nC, 1, K)
    allowed = mask.mod(bh // heads, bh % heads, i, j, lq, lk)
    return allowed if ok is None else ok & allowed


def _duplicate_counts(chunk_of: Tensor, rows: Tensor, cols: Tensor, n_chunks: int, this_round: int,
                      dtype: torch.dtype) -> Tensor:
    """In how many rounds each (row, col) pair of round ``this_round`` is attended.

    ``chunk_of (BH, R, N+1)`` chunk of each item per round; ``rows (BH, nC, C)``, ``cols (BH, nC, K)``
    item ids -> ``(BH, nC, C, K)`` counts >= 1. A pair is attended in a round when the key's chunk
    is the query's chunk or the one before it."""
    count = torch.ones(*rows.shape, cols.shape[-1], dtype=torch.uint8, device=rows.device)
    for r in range(chunk_of.shape[1]):
        if r == this_round:
            continue
        cq = chunk_of[:, r].gather(1, rows.flatten(1)).view(rows.shape).unsqueeze(-1)  # (BH, nC, C, 1)
        ck = chunk_of[:, r].gather(1, cols.flatten(1)).view(cols.shape)  # (BH, nC, K)
        ck_next = torch.remainder(ck + 1, n_chunks).unsqueeze(-2)  # (BH, nC, 1, K)
        hit = cq == ck.unsqueeze(-2)  # (BH, nC, C, K)
        count += hit.logical_or_(cq == ck_next)
    return count.to(dtype)


# ----------------------------------------------------------------------------------------------
# the functional core
# ----------------------------------------------------------------------------------------------


def _sort_orders(items: _Items, buckets: Tensor, n_chunks: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Sort the items by ``(bucket, time)`` in every round.

    Returns the sorted item ids padded with the dummy ``(BH, R, nC*C)`` and the sorted slot
    (rank) of every item ``(BH, R, N)``."""
    n = items.n
    key = buckets * (2 * int(items.time.max()) + 2) + items.time  # (BH, R, N) unique per round
    order = key.argsort(dim=-1)  # (BH, R, N)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(n, device=order.device).expand_as(order))
    return F.pad(order, (0, n_chunks * chunk - n), value=n), rank


def lsh_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, *, scale: float | None = None,
                  settings: LSHSettings | None = None, generator: torch.Generator | None = None,
                  return_weights: bool = False, return_lse: bool = False) -> LSHResult:
    """LSH attention on ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)``.

    Returns an :class:`LSHResult` with ``out (B, H, T, Dv)`` (and the attended keys and their
    weights when ``return_weights``, the per-query log-sum-exp ``(B, H, T)`` when ``return_lse``).
    A query with no allowed key among those it attended gets a zero output; NaN in a query, or in
    a key or value it attends, gives a NaN output row. Differentiable in ``q``, ``k``, ``v`` (the
    bucket assignment is piecewise constant and carries no gradient).
    """
    st = settings or LSHSettings()
    b, h, t, d = q.shape
    s, dv = k.shape[2], v.shape[3]
    scale = d ** -0.5 if scale is None else scale
    if st.shared_qk and t != s:
        raise AttnKitError(f"lsh shared_qk=True needs as many queries as keys; got T={t}, S={s}")
    out_dtype = q.dtype
    if mask is not None:  # keys hidden from every query: zeroed, so NaN there cannot leak
        k, v = hide_masked_keys(mask, k, v)
    work = compute_dtype(q.dtype)
    n_rep = h // k.shape[1]
    qf = q.to(work).reshape(b * h, t, d)  # (BH, T, D)
    kf = repeat_kv(k.to(work), n_rep).reshape(b * h, s, d)  # (BH, S, D)
    vf = repeat_kv(v.to(work), n_rep).reshape(b * h, s, dv)  # (BH, S, Dv)

    items = _items(qf, kf, vf, st.shared_qk)
    n = items.n
    chunk = min(st.bucket_size, n)
    n_chunks = math.ceil(n / chunk)
    n_buckets = st.buckets_for(n)
    rot = random_rotations(d, st.n_hashes, n_buckets, generator=generator, seed=st.seed)
    with torch.no_grad():
        buckets = hash_vectors(items.hashed.detach(), rot, n_buckets)  # (BH, R, N)
        orders, ranks = _sort_orders(items, buckets, n_chunks, chunk)
        # chunk of every item per round (BH, R, N+1); the dummy matches no chunk
        chunk_of = F.pad(torch.div(ranks, chunk, rounding_mode="floor"), (0, 1), value=-n_chunks)
    kernel_mask = _kernel_mask(mask, t, s) if st.kernel == "auto" and not return_weights else None
    if kernel_mask is not None and kernel_usable(device=q.device, head_dim=max(d, dv), block_q=chunk,
                                                 block_k=chunk, work=n * 2 * chunk * st.n_hashes):
        out, lse = _rounds_on_kernel(items, orders, ranks, chunk_of if st.dedup else None, kernel_mask, b, h, t, s,
                                     chunk, scale, st.shared_qk)
        return LSHResult(out.to(out_dtype), lse=lse if return_lse else None)
    chunk_of = chunk_of.to(torch.int16 if n_chunks < 2**14 else torch.int32)

    packed = torch.cat([items.qv, items.kv, items.vv], dim=-1)  # (BH, N+1, 2D+Dv): one gather per round
    flat = packed.reshape(-1, packed.shape[-1])  # (BH*(N+1), 2D+Dv)
    base = _slots(b * h, n + 1, q.device)  # (BH, 1) row offset of each head in flat
    slot_base = _slots(b * h, n_chunks * chunk, q.device)  # the same for the sorted slots
    masked = _mask_or_none(mask)
    need_ok = not st.shared_qk or n_chunks * chunk > n  # non-queries / non-keys / dummies present
    self_tile = _self_pattern(chunk, n_chunks, q.device) if st.shared_qk else None  # (C, K)
    inplace = not (torch.is_grad_enabled() and packed.requires_grad)
    nums, dens, maxes, tiles = [], [], [], []
    for r in range(st.n_hashes):
        order = orders[:, r]  # (BH, nC*C) item ids in sorted order
        rows = order.view(b * h, n_chunks, chunk)  # (BH, nC, C)
        cols = _look_one_back(order, chunk)  # (BH, nC, K)
        srt = flat.index_select(0, (order + base).flatten()).view(b * h, n_chunks * chunk, -1)  # (BH, nC*C, E)
        qs = srt.view(b * h, n_chunks, chunk, -1)[..., :d]  # (BH, nC, C, D)
        kv_win = _look_one_back(srt[..., d:], chunk)  # (BH, nC, K, D+Dv)
        ks, vs = kv_win[..., :d], kv_win[..., d:]  # (BH, nC, K, D), (BH, nC, K, Dv)
        qpos, kpos = items.qpos[rows], _look_one_back(items.kpos[order], chunk)  # (BH, nC, C), (BH, nC, K)
        sc = qs @ ks.transpose(-1, -2)  # (BH, nC, C, K)
        sc = sc.mul_(scale) if inplace else sc * scale
        if self_tile is not None:
            sc = sc.masked_fill_(self_tile, SELF_SCORE) if inplace else sc.masked_fill(self_tile, SELF_SCORE)
        if st.dedup and st.n_hashes > 1 and n_chunks > 2:
            with torch.no_grad():
                counts = _duplicate_counts(chunk_of, rows, cols, n_chunks, r, sc.dtype)  # (BH, nC, C, K)
            sc = sc.sub_(counts.log_()) if inplace else sc - counts.log_()
        elif st.dedup and st.n_hashes > 1:  # <= 2 chunks: every round attends everything
            sc = sc - math.log(st.n_hashes)
        if need_ok or masked is not None:
            blocked = ~_allowed(masked, h, t, s, qpos, kpos, need_ok)  # (BH, nC, C, K)
            sc = sc.masked_fill_(blocked, -math.inf) if inplace else sc.masked_fill(blocked, -math.inf)
        m = sc.amax(-1, keepdim=True).detach()  # (BH, nC, C, 1)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype))
        p = sc.sub_(m_safe).exp_() if inplace and not return_weights else torch.exp(sc - m_safe)  # (BH, nC, C, K)
        # numerator, denominator and running max in sorted order, back to query order in one gather
        stats = torch.cat([p @ vs, p.sum(-1, keepdim=True), m], dim=-1).view(b * h, n_chunks * chunk, dv + 2)
        rank = ranks[:, r, :t]  # (BH, T) sorted slot of each query (items 0..T-1 are the queries)
        back = stats.reshape(-1, dv + 2).index_select(0, (rank + slot_base).flatten()).view(b * h, t, dv + 2)
        nums.append(back[..., :dv])  # (BH, T, Dv)
        dens.append(back[..., dv:dv + 1])  # (BH, T, 1)
        maxes.append(back[..., dv + 1:].detach())  # (BH, T, 1)
        if return_weights:
            tiles.append((p.view(b * h, n_chunks * chunk, -1), kpos, rank))

    mstack = torch.stack(maxes)  # (R, BH, T, 1)
    top = mstack.amax(0)  # (BH, T, 1)
    top = torch.where(torch.isfinite(top), top, torch.zeros((), dtype=top.dtype))
    factors = torch.exp(mstack - top)  # (R, BH, T, 1); 0 for rounds with no allowed key
    num = sum(f * x for f, x in zip(factors, nums))  # (BH, T, Dv)
    den = sum(f * x for f, x in zip(factors, dens))  # (BH, T, 1)
    alive = den != 0  # 0: no allowed key in any round; NaN (a NaN score) stays NaN
    safe_den = torch.where(alive, den, torch.ones((), dtype=den.dtype))  # (BH, T, 1)
    out = torch.where(alive, num / safe_den, torch.zeros((), dtype=num.dtype))  # (BH, T, Dv)
    out = out.view(b, h, t, dv).to(out_dtype)
    lse = None
    if return_lse:
        lse = torch.where(alive, top + safe_den.log(), -math.inf).view(b, h, t)  # (B, H, T)
    if not return_weights:
        return LSHResult(out, lse=lse)
    idx_parts, val_parts = [], []
    for (p, kpos, rank), f in zip(tiles, factors):
        n_chunks_, k_width = kpos.shape[1], kpos.shape[2]
        kp = kpos.unsqueeze(2).expand(-1, -1, chunk, -1).reshape(b * h, n_chunks_ * chunk, k_width)
        p_back = _gather_rows(p, rank)  # (BH, T, K): 0 on blocked slots
        vals = p_back * f / safe_den  # (BH, T, K)
        attended = (p_back != 0) & (vals != 0)  # NaN counts as attended
        idx_parts.append(torch.where(attended, _gather_rows(kp, rank), -1))  # (BH, T, K) key positions
        val_parts.append(vals)
    idx = torch.cat(idx_parts, -1)
    vals = torch.cat(val_parts, -1)
    return LSHResult(out, idx.view(b, h, t, -1), vals.view(b, h, t, -1).to(out_dtype), lse)


def _slots(bh: int, slots: int, device: torch.device) -> Tensor:
    """Row offset of each batch-head in a flattened ``(BH * slots, E)`` tensor, ``(BH, 1)``."""
    return (torch.arange(bh, device=device) * slots).view(-1, 1)


def _self_pattern(chunk: int, n_chunks: int, device: torch.device) -> Tensor:
    """Where a row meets itself in a (C, K) tile: the diagonal of the last C columns (the key
    side is the previous chunk, then the row's own chunk; their items are distinct)."""
    eye = torch.eye(chunk, dtype=torch.bool, device=device)
    return eye if n_chunks == 1 else torch.cat([torch.zeros_like(eye), eye], dim=-1)


def _mask_or_none(mask: Mask | None) -> Mask | None:
    return None if mask is None or isinstance(mask, Full) else mask


# ----------------------------------------------------------------------------------------------
# the rounds on the native kernel
# ----------------------------------------------------------------------------------------------


def _kernel_mask(mask: Mask | None, lq: int, lk: int) -> tuple[int | None, Mask | None] | None:
    """What the kernel's ``hashed`` modifier evaluates of ``mask``: ``(causal offset or None, the
    key-side part or None)``, or None when ``mask`` has a part it cannot evaluate (then the
    rounds run in PyTorch). Takes ``Full``, ``Causal``, ``Padding``, ``KeyMask`` and their ``&``."""
    if mask is None:
        return None, None
    offset, keys = None, []
    todo = [mask]
    while todo:
        part = todo.pop()
        if isinstance(part, And):
            todo.extend(part.parts)
        elif isinstance(part, Causal):
            o = part.offset(lq, lk)
            offset = o if offset is None else min(offset, o)
        elif isinstance(part, (Padding, KeyMask)):
            keys.append(part)
        elif not isinstance(part, Full):
            return None
    return offset, (None if not keys else keys[0] if len(keys) == 1 else And(*keys))


@functools.lru_cache(maxsize=32)
def _look_one_back_mask(n_chunks: int, chunk: int) -> BlockSparse:
    """The tiles of one round in sorted order: chunk ``c`` attends chunks ``c - 1`` (cyclically)
    and ``c``; one mask object per size, so its kernel plan is built once."""
    eye = torch.eye(n_chunks, dtype=torch.bool)
    return BlockSparse((eye | eye.roll(-1, dims=1)).unsqueeze(0), chunk, chunk)  # (1, nC, nC)


def _rounds_on_kernel(items: _Items, orders: Tensor, ranks: Tensor, chunk_of: Tensor | None,
                      kernel_mask: tuple[int | None, Mask | None], b: int, h: int, t: int, n_keys: int, chunk: int,
                      scale: float, shared: bool) -> tuple[Tensor, Tensor]:
    """Every hash round as tile attention over its sorted items (the look-one-back tiles), with the
    pair rules (query / key, causal, self score, duplicate counts) in the kernel's ``hashed``
    modifier; the rounds merged by their log-sum-exp. Returns ``out (B, H, T, Dv)`` and
    ``lse (B, H, T)``.

    ``orders (BH, R, nC*C)`` sorted item ids (dummy N past the end), ``ranks (BH, R, N)`` sorted
    slot of each item, ``chunk_of (BH, R, N+1)`` chunk of each item per round (None: no dedup)."""
    bh, n_rounds, slots = orders.shape
    n_chunks = slots // chunk
    dv = items.vv.shape[-1]
    causal_offset, key_side = kernel_mask
    qpos = items.qpos.expand(bh, -1)  # (BH, N+1)
    kpos = items.kpos.expand(bh, -1)
    if key_side is not None:  # keys hidden from every query of a batch element: not keys there
        keep = key_side.key_keep(n_keys, device=kpos.device).expand(b, -1).repeat_interleave(h, dim=0)  # (BH, S)
        kpos = torch.where((kpos >= 0) & keep.gather(1, kpos.clamp(min=0)), kpos, -1)
    qv, kv, vv = (x.reshape(-1, x.shape[-1]) for x in (items.qv, items.kv, items.vv))  # (BH*(N+1), E)
    base = _slots(bh, items.n + 1, orders.device)  # (BH, 1)
    tiles = _look_one_back_mask(n_chunks, chunk)
    parts = []
    for r in range(n_rounds):
        order = orders[:, r]  # (BH, nC*C)
        rows = (order + base).flatten()
        ids = [qpos.gather(1, order), kpos.gather(1, order)]  # (BH, nC*C) each
        if chunk_of is not None and n_rounds > 1:
            others = torch.cat([chunk_of[:, :r], chunk_of[:, r + 1:]], dim=1)  # (BH, R-1, N+1)
            ids.extend(others.gather(2, order.unsqueeze(1).expand(-1, n_rounds - 1, -1)).unbind(1))
        hashed = HashedItems(torch.stack(ids, 1).view(b, h, len(ids), slots), n_chunks, causal_offset, shared)
        qs, ks, vs = (F.embedding(rows, x).view(b, h, slots, -1) for x in (qv, kv, vv))  # (B, H, nC*C, E)
        out, lse = tile_attention(qs, ks, vs, tiles, scale, chunk, chunk, mods=[KernelMod("hashed", hashed)])
        back = (ranks[:, r, :t] + _slots(bh, slots, orders.device)).flatten()  # sorted slot of each query
        parts.append((F.embedding(back, out.reshape(-1, dv)).view(b, h, t, dv),
                      lse.reshape(-1).index_select(0, back).view(b, h, t)))
    return merge_partials(parts)


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------


def lsh(call: AttentionCall) -> AttnResult:
    """The ``lsh`` implementation of :func:`attnkit.attention` (weights returned dense)."""
    res = lsh_attention(call.q, call.k, call.v, call.mask, scale=call.scale,
                        settings=LSHSettings(**read_options(call, "lsh", OPTIONS)), generator=call.generator,
                        return_weights=call.return_weights, return_lse=call.return_lse)
    return AttnResult(res.out, res.dense_weights(call.lk) if call.return_weights else None, res.lse)


def _check(call: AttentionCall) -> list[str]:
    try:
        st = LSHSettings(**read_options(call, "lsh", OPTIONS))
    except AttnKitError as err:
        return [str(err)]
    if st.shared_qk and call.lq != call.lk:
        return [f"shared_qk=True needs T == S; got T={call.lq}, S={call.lk}"]
    return []


register_impl(ImplSpec(
    name="lsh",
    fn=lsh,
    description="Reformer LSH attention: hash, sort, chunked attention with look-one-back (approximate)",
    scores=frozenset({"scaled_dot", "dot"}),
    weights=frozenset({"softmax"}),
    mask_types=(Causal, Padding, KeyMask, Full),
    score_mods="none",
    dropout=False,
    returns_lse=True,
    exact=False,
    options=frozenset(OPTIONS),
    priority=510,  # after linear (the order list_impls gave by name)
    check=_check,
))
