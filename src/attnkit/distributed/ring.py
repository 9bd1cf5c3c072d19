"""Ring attention: the sequence is sharded over the ranks of a process group and the key/value
shards travel around the ring.

Each of the N steps, every rank attends its queries to the key/value shard it holds (with
:func:`attnkit.attention` and ``return_lse=True``) while the shard moves on to the next rank
(``batch_isend_irecv``, posted before the compute so that the transfer overlaps it); the partial
results are merged with their log-sum-exp (:func:`attnkit.merge_partials`). Masks are evaluated at
global positions; a (query piece, key piece) pair that the mask hides entirely is skipped, and a
pair it allows entirely runs without a mask.

The backward pass (one :class:`torch.autograd.Function`) sends the key/value shards round again.
At each step a rank recomputes its partial results with autograd, turns the gradient of the merged
output into the gradient of each partial (``d out_i = c_i d out``, ``d lse_i = c_i (d out . (out_i
- out) + d lse)`` with ``c_i = exp(lse_i - lse)``), and adds its share of dK/dV to an accumulator
that travels the ring with the shard; after N steps each accumulator is back at the shard's owner.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import AttnKitError, DTypeError, ShapeError, UnsupportedError
from ..functional import attention
from ..masks import EMPTY, FULL, BlockMask, Mask, as_mask
from ..merge import merge_partials
from . import _group
from ._global_mask import piece_kind, region
from .layout import LayoutName, ShardLayout

__all__ = ["ring_attention"]

_SCORES = ("scaled_dot", "dot", "cosine")  # position-independent scores: shard-invariant


def ring_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None, *, group: Any = None,
                   layout: LayoutName | ShardLayout = "zigzag", score: str = "scaled_dot", scale: float | None = None,
                   impl: str = "blockwise", options: Mapping[str, Any] | None = None,
                   return_lse: bool = False, check: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention over a sequence sharded across the ranks of ``group`` (self-attention:
    queries and keys share the positions).

    Args:
        q: this rank's queries ``(B, H, T_r, D)`` (its shard under ``layout``; see
            :func:`attnkit.distributed.shard`).
        k: this rank's keys ``(B, Hkv, T_r, D)``; ``H`` a multiple of ``Hkv`` (GQA: only the
            ``Hkv`` heads travel).
        v: this rank's values ``(B, Hkv, T_r, Dv)``.
        mask: a mask of the GLOBAL ``T x T`` problem (True = attend): causal, window, padding,
            key masks, a ``(T, T)`` / ``(B|1, H|1, T, T)`` bool tensor, block layouts, ``& | ~``
            of them, any :class:`~attnkit.masks.Mask`. The same on every rank.
        group: the process group (None: the default group).
        layout: ``"zigzag"`` (default: balanced work under a causal mask), ``"contiguous"`` or
            a :class:`~attnkit.distributed.ShardLayout`.
        score: ``"scaled_dot"``, ``"dot"`` or ``"cosine"``; scale: as in :func:`attnkit.attention`.
        impl: the implementation of each local step (one that returns the log-sum-exp).
        options: its options.
        return_lse: also return the log-sum-exp ``(B, H, T_r)`` of each query row.
        check: check that every rank makes the same call (shapes, dtype, mask, layout) before
            any data moves; one small all-gather per call.

    Returns:
        ``out (B, H, T_r, Dv)`` for this rank's queries (and ``lse`` with ``return_lse``): equal
        to single-process attention on the gathered sequence, sharded the same way.

    Shape legend: B batch, H query heads, Hkv key/value heads, T_r this rank's positions, D head
    dim, Dv value dim.
    """
    g = _group.resolve(group)
    m = _check_local(q, k, v, mask, score, impl)
    lay = _agree(g, q, k, v, m, layout, score=score, scale=scale, impl=impl, return_lse=return_lse, check=check)
    with _group.fail_fast():  # from here on the ranks proceed together: a failure is published
        if m is not None:
            m.validate(lay.length, lay.length, q.shape[0], q.shape[1])
        plan = _Plan(g, lay, m, dict(score=score, scale=scale, impl=impl, options=options))
        out, lse = _Ring.apply(plan, q, k, v)
    return (out, lse) if return_lse else out


def _check_local(q: Tensor, k: Tensor, v: Tensor, mask: Any, score: str, impl: str) -> Mask | None:
    """The checks one rank can make alone (before anything is exchanged)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ShapeError(f"{name} must be a 4-D tensor (B, H, T_r, D) (this rank's shard); got {got}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]) or not (q.shape[2] == k.shape[2] == v.shape[2]):
        raise ShapeError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share B and T_r "
                         "(self-attention over one sharded sequence)")
    if k.shape[1] != v.shape[1] or k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ShapeError(f"q heads {q.shape[1]} must be a multiple of k/v heads {k.shape[1]} / {v.shape[1]}")
    if q.shape[3] != k.shape[3]:
        raise ShapeError(f"q and k head dims differ: {q.shape[3]} vs {k.shape[3]}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise DTypeError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise DTypeError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if score not in _SCORES:
        raise UnsupportedError(f"score {score!r} is not supported across shards; expected one of {list(_SCORES)} "
                               "(scores that depend on positions would need global positions)")
    if not isinstance(impl, str):
        raise AttnKitError(f"impl must be an implementation name; got {type(impl).__name__}")
    if isinstance(mask, BlockMask):
        raise UnsupportedError("a BlockMask is a plan for one problem size; pass the Mask it was built from")
    return as_mask(mask)


def describe_mask(m: Mask | None) -> dict[str, Any] | None:
    """What identifies a mask across ranks: its repr and a digest of every tensor it holds."""
    if m is None:
        return None
    data = []
    for leaf in m.leaves():
        for value in vars(leaf).values() if hasattr(leaf, "__dict__") else ():
            if isinstance(value, Tensor):
                data.append(_group.tensor_digest(value))
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(m))  # functions print their address, which differs per process
    return {"repr": text[:400], "data": data}


def _agree(g: _group.Group, q: Tensor, k: Tensor, v: Tensor, m: Mask | None, layout: Any, *,
           check: bool, **call: Any) -> ShardLayout:
    """Exchange the call's description and build the layout; refuse disagreement on every rank."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    desc = {"B": q.shape[0], "H": q.shape[1], "Hkv": k.shape[1], "D": q.shape[3], "Dv": v.shape[3],
            "dtype": str(q.dtype), "device_type": q.device.type, "mask": describe_mask(m), "grad": grad,
            "layout": layout.segments if isinstance(layout, ShardLayout) else layout,
            "call": {n: v for n, v in call.items()}, "T_r": q.shape[2]}
    if not check:
        if not isinstance(layout, ShardLayout):
            raise AttnKitError("check=False needs an explicit ShardLayout (the global length is otherwise "
                               "learnt from the agreement check)")
        return layout
    descs = _group.agree(g, desc, same=["B", "H", "Hkv", "D", "Dv", "dtype", "device_type", "mask", "grad",
                                        "layout", "call"])
    length = sum(d["T_r"] for d in descs)
    lay = ShardLayout.build(layout, length, g.size)
    bad = [(r, d["T_r"], lay.local_length(r)) for r, d in enumerate(descs) if d["T_r"] != lay.local_length(r)]
    if bad:
        detail = ", ".join(f"rank {r} holds {n} (expected {e})" for r, n, e in bad)
        raise ShapeError(f"the shards do not follow the {lay.name} layout of T={length} over {g.size} ranks: "
                         f"{detail}; shard inputs with attnkit.distributed.shard()")
    return lay


class _Plan:
    """What the ring needs besides the tensors: the group, the layout, the mask and the call."""

    def __init__(self, g: _group.Group, lay: ShardLayout, mask: Mask | None, call: dict[str, Any]):
        self.g, self.lay, self.mask, self.call = g, lay, mask, call
        self.T = lay.length

    def pieces(self, rank: int) -> list[tuple[int, int, int]]:
        """``(local start, global start, length)`` of each segment ``rank`` holds."""
        out, lo = [], 0
        for a, b in self.lay.segments[rank]:
            if b > a:
                out.append((lo, a, b - a))
            lo += b - a
        return out

    def pairs(self, src: int) -> list[tuple[tuple[int, int, int], tuple[int, int, int], Mask | None]]:
        """The (query piece, key piece, mask) pairs of one step that the mask does not hide."""
        r = self.g.rank
        out = []
        for qp in self.pieces(r):
            for kp in self.pieces(src):
                m = region(self.mask, qp[1], kp[1], self.T, self.T)
                kind = piece_kind(m, qp[2], kp[2])
                if kind != EMPTY:
                    out.append((qp, kp, None if kind == FULL else m))
        return out

    def attend(self, q: Tensor, k: Tensor, v: Tensor, m: Mask | None) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        out, lse = attention(q, k, v, m, return_lse=True, **self.call)
        s = _group.stats()
        if s is not None:
            s.compute_s += time.perf_counter() - t0
        return out, lse


def _pack(*ts: Tensor) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _unpack(buf: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    out, at = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(buf[at:at + n].view(s))
        at += n
    return out


def _exchange(plan: _Plan, send: Tensor, recv_numel: int, tag: int) -> tuple[list[Any], Tensor]:
    """Send ``send`` to the next rank and receive ``recv_numel`` elements from the previous one."""
    g = plan.g
    recv = torch.empty(recv_numel, dtype=send.dtype, device=send.device)
    ops = [dist.P2POp(dist.isend, send, g.global_rank(g.rank + 1), g.pg, tag),
           dist.P2POp(dist.irecv, recv, g.global_rank(g.rank - 1), g.pg, tag)]
    works = dist.batch_isend_irecv(ops)
    nbytes = send.numel() * send.element_size()
    _group.count_sent(nbytes)
    s = _group.stats()
    if s is not None:
        s.per_step_bytes.append(nbytes)
    return works, recv


def _kv_shapes(plan: _Plan, k: Tensor, v: Tensor, src: int) -> list[tuple[int, ...]]:
    n = plan.lay.local_length(src)
    return [(k.shape[0], k.shape[1], n, k.shape[3]), (v.shape[0], v.shape[1], n, v.shape[3])]


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: _Plan, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        try:
            out, lse = _forward(plan, q, k, v)
        except BaseException as err:
            _group.publish_error(err)
            raise
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_lse: Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        try:
            dq, dk, dv = _backward(ctx.plan, q, k, v, out, lse, d_out, d_lse)
        except BaseException as err:
            _group.publish_error(err)
            raise
        return None, dq, dk, dv


def _forward(plan: _Plan, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    g = plan.g
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    acc: dict[int, tuple[Tensor, Tensor]] = {}  # query piece start -> merged (out, lse) so far
    kv = _pack(k, v)
    with torch.no_grad():
        for t in range(g.size):
            src = (g.rank - t) % g.size
            works, nxt = [], None
            if t < g.size - 1:  # post the transfer for the next step first: it overlaps the compute
                nxt_src = (src - 1) % g.size
                works, nxt = _exchange(plan, kv, sum(map(math.prod, _kv_shapes(plan, k, v, nxt_src))), tag=0)
            ks, vs = _unpack(kv, _kv_shapes(plan, k, v, src))
            for qp, kp, m in plan.pairs(src):
                part = plan.attend(q[:, :, qp[0]:qp[0] + qp[2]], ks[:, :, kp[0]:kp[0] + kp[2]],
                                   vs[:, :, kp[0]:kp[0] + kp[2]], m)
                acc[qp[0]] = part if qp[0] not in acc else merge_partials([acc[qp[0]], part])
            _group.wait_all(works, g, f"ring step {t + 1} of {g.size}")
            s = _group.stats()
            if s is not None:
                s.steps += 1
            if nxt is not None:
                kv = nxt
    b, h, n = q.shape[:3]
    out = q.new_zeros(b, h, n, v.shape[3])
    lse = torch.full((b, h, n), -math.inf, dtype=lse_dtype, device=q.device)
    for lo, (o, part_lse) in acc.items():
        out[:, :, lo:lo + o.shape[2]] = o
        lse[:, :, lo:lo + o.shape[2]] = part_lse.to(lse_dtype)
    return out, lse


def _backward(plan: _Plan, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, d_out: Tensor,
              d_lse: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    g = plan.g
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    kv = _pack(k, v)
    d_acc: Tensor | None = None  # the dK/dV accumulator of the shard held now
    acc_works: list[Any] = []
    for t in range(g.size):
        src = (g.rank - t) % g.size
        works, nxt = [], None
        if t < g.size - 1:
            nxt_src = (src - 1) % g.size
            works, nxt = _exchange(plan, kv, sum(map(math.prod, _kv_shapes(plan, k, v, nxt_src))), tag=0)
        shapes = _kv_shapes(plan, k, v, src)
        ks, vs = _unpack(kv, shapes)
        dk = torch.zeros(shapes[0], dtype=acc_dtype, device=q.device)
        dv = torch.zeros(shapes[1], dtype=acc_dtype, device=q.device)
        for qp, kp, m in plan.pairs(src):
            qsl, ksl = slice(qp[0], qp[0] + qp[2]), slice(kp[0], kp[0] + kp[2])
            with torch.enable_grad():
                qi = q[:, :, qsl].detach().requires_grad_()
                ki = ks[:, :, ksl].detach().requires_grad_()
                vi = vs[:, :, ksl].detach().requires_grad_()
                o_i, l_i = plan.attend(qi, ki, vi, m)
            total = lse[:, :, qsl]
            c = torch.where(total == -math.inf, 0.0, torch.exp(l_i.to(total.dtype) - total))  # (B, H, Tq)
            d_o = d_out[:, :, qsl]
            g_l = (d_o.to(total.dtype) * (o_i.detach() - out[:, :, qsl]).to(total.dtype)).sum(-1)
            if d_lse is not None:
                g_l = g_l + d_lse[:, :, qsl].to(total.dtype)
            grads = torch.autograd.grad((o_i, l_i), (qi, ki, vi),
                                        ((c.unsqueeze(-1) * d_o).to(o_i.dtype), (c * g_l).to(l_i.dtype)),
                                        allow_unused=True)
            for dst, sl, gr in ((dq, qsl, grads[0]), (dk, ksl, grads[1]), (dv, ksl, grads[2])):
                if gr is not None:
                    dst[:, :, sl] += gr
        local = _pack(dk, dv)
        if t > 0:
            _group.wait_all(acc_works, g, f"gradient step {t + 1} of {g.size}")
            assert d_acc is not None
            local = local + d_acc
        if g.size > 1:
            # the accumulator of the shard held next step arrives from the previous rank; after
            # the last step that is this rank's own shard, complete
            acc_works, d_acc = _exchange(plan, local, sum(map(math.prod, _kv_shapes(plan, k, v, (src - 1) % g.size))),
                                         tag=1)
        else:
            d_acc = local
        _group.wait_all(works, g, f"gradient step {t + 1} of {g.size}")
        if nxt is not None:
            kv = nxt
    if g.size > 1:
        _group.wait_all(acc_works, g, "the last gradient transfer")
    assert d_acc is not None
    dk_own, dv_own = _unpack(d_acc, _kv_shapes(plan, k, v, g.rank))
    return dq.to(q.dtype), dk_own.to(k.dtype), dv_own.to(v.dtype)
