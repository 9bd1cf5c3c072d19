"""The functional core of LSH attention: hash, sort, and attend in chunks with look-one-back, each
round in PyTorch or on the native kernel (see the package docstring).

Shape legend: B batch, H heads, T queries, S keys, D head dim, Dv value dim, N sorted items,
nC chunks, C chunk length, R hash rounds.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...call import hide_masked_keys
from ...errors import AttnKitError
from ...kernels.tiles import kernel_usable
from ...masks import Full, Mask
from ...shapes import repeat_kv
from .._common import compute_dtype
from .items import _gather_rows, _items, _look_one_back, _slots, _sort_orders, hash_vectors, random_rotations
from .on_kernel import kernel_mask, rounds_on_kernel
from .on_triton import rounds_on_triton, triton_route_reasons
from .settings import LSHResult, LSHSettings

__all__ = ["SELF_SCORE", "lsh_attention"]

SELF_SCORE = -1e5  # replaces q_i . k_i in shared-QK mode: used only when nothing else is allowed


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


@functools.lru_cache(maxsize=32)
def _seeded_rotations(head_dim: int, n_hashes: int, n_buckets: int, seed: int, device: torch.device) -> Tensor:
    """:func:`random_rotations` of ``seed``, on ``device``, drawn once per setting (a call then
    spends neither the CPU draw nor the copy to a GPU); callers only read it."""
    return random_rotations(head_dim, n_hashes, n_buckets, seed=seed).to(device)


def lsh_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, *, scale: float | None = None,
                  settings: LSHSettings | None = None, generator: torch.Generator | None = None,
                  return_weights: bool = False, return_lse: bool = False, dropout_p: float = 0.0) -> LSHResult:
    """LSH attention on ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)``.

    Returns an :class:`LSHResult` with ``out (B, H, T, Dv)`` (and the attended keys and their
    weights when ``return_weights``, the per-query log-sum-exp ``(B, H, T)`` when ``return_lse``).
    A query with no allowed key among those it attended gets a zero output; NaN in a query, or in
    a key or value it attends, gives a NaN output row. Differentiable in ``q``, ``k``, ``v`` (the
    bucket assignment is piecewise constant and carries no gradient).

    ``dropout_p`` drops each attended (query, key) weight of each round with that probability and
    scales the kept ones by ``1 / (1 - dropout_p)`` (as Reformer does, per round; the masks are drawn
    from ``generator`` when given), so the output is unbiased; the normaliser, the log-sum-exp and
    the returned weights are those without dropout, as in the reference. Dropout runs the rounds in
    PyTorch (the kernels have none).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise AttnKitError(f"dropout_p must be in [0, 1); got {dropout_p!r}")
    st = settings or LSHSettings()
    b, h, t, d = q.shape
    s, dv = k.shape[2], v.shape[3]
    scale = d ** -0.5 if scale is None else scale
    if st.shared_qk and t != s:
        raise AttnKitError(f"lsh shared_qk=True needs as many queries as keys; got T={t}, S={s}")
    out_dtype = q.dtype
    if mask is not None:  # keys hidden from every query: zeroed, so NaN there cannot leak
        k, v = hide_masked_keys(mask, k, v)
    mask_form = kernel_mask(mask, t, s)  # what the kernels evaluate of the mask (None: they cannot)
    on_triton = False
    if st.kernel == "triton" or (st.kernel == "auto" and q.is_cuda):
        why = triton_route_reasons(q.device, st.bucket_size, max(d, dv), mask_form, return_weights)
        if dropout_p > 0:
            why = [*why, "dropout runs in PyTorch only"]
        if why and st.kernel == "triton":
            raise AttnKitError(f"lsh option kernel='triton' cannot run this call: {'; '.join(why)}")
        on_triton = not why
    # the Triton kernels multiply half inputs in their own dtype (accumulating in float32)
    work = q.dtype if on_triton and q.dtype in (torch.float16, torch.bfloat16) else compute_dtype(q.dtype)
    n_rep = h // k.shape[1]
    qf = q.to(work).reshape(b * h, t, d)  # (BH, T, D)
    kf = repeat_kv(k.to(work), n_rep).reshape(b * h, s, d)  # (BH, S, D)
    vf = repeat_kv(v.to(work), n_rep).reshape(b * h, s, dv)  # (BH, S, Dv)

    items = _items(qf, kf, vf, st.shared_qk)
    n = items.n
    chunk = st.bucket_size if on_triton else min(st.bucket_size, n)  # the kernels' tile is the bucket
    n_chunks = math.ceil(n / chunk)
    n_buckets = st.buckets_for(n)
    if generator is None:  # drawn from the seed: the same rotations every call, kept on the device
        rot = _seeded_rotations(d, st.n_hashes, n_buckets, st.seed, q.device)
    else:
        rot = random_rotations(d, st.n_hashes, n_buckets, generator=generator, seed=st.seed)
    with torch.no_grad():
        if on_triton and n_buckets > 1:  # one fused pass in the inputs' dtype, projections kept in registers
            from ...kernels.triton_hashing import hash_buckets

            flat = items.hashed.detach().reshape(b * h * n, d)
            buckets = hash_buckets(flat, rot).view(b * h, n, -1).transpose(1, 2).contiguous()  # (BH, R, N)
        else:
            buckets = hash_vectors(items.hashed.detach().to(compute_dtype(q.dtype)), rot, n_buckets)  # (BH, R, N)
        orders, ranks = _sort_orders(items, buckets, n_buckets, n_chunks, chunk)
        # chunk of every item per round (BH, R, N+1); the dummy matches no chunk
        chunk_of = F.pad(torch.div(ranks, chunk, rounding_mode="floor"), (0, 1), value=-n_chunks)
    if on_triton:
        out, lse = rounds_on_triton(items, orders, ranks, chunk_of if st.dedup else None, mask_form, b, h, t, s,
                                    chunk, scale, st.shared_qk, indexed=st.triton_rows == "indexed")
        return LSHResult(out.to(out_dtype), lse=lse if return_lse else None)
    on_kernel = mask_form if st.kernel == "auto" and not return_weights and not dropout_p else None
    if on_kernel is not None and n < 2**31 and kernel_usable(  # the kernel reads int32 positions
            device=q.device, head_dim=max(d, dv), block_q=chunk, block_k=chunk, work=n * 2 * chunk * st.n_hashes):
        out, lse = rounds_on_kernel(items, orders, ranks, chunk_of if st.dedup else None, on_kernel, b, h, t, s,
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
        p_used = p
        if dropout_p > 0:  # the numerator's weights only: dropout of the normalised weights
            keep = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) >= dropout_p
            p_used = p * keep / (1 - dropout_p)
        # numerator, denominator and running max in sorted order, back to query order in one gather
        stats = torch.cat([p_used @ vs, p.sum(-1, keepdim=True), m], dim=-1).view(b * h, n_chunks * chunk, dv + 2)
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


def _self_pattern(chunk: int, n_chunks: int, device: torch.device) -> Tensor:
    """Where a row meets itself in a (C, K) tile: the diagonal of the last C columns (the key
    side is the previous chunk, then the row's own chunk; their items are distinct)."""
    eye = torch.eye(chunk, dtype=torch.bool, device=device)
    return eye if n_chunks == 1 else torch.cat([torch.zeros_like(eye), eye], dim=-1)


def _mask_or_none(mask: Mask | None) -> Mask | None:
    return None if mask is None or isinstance(mask, Full) else mask
