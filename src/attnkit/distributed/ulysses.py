"""All-to-all (Ulysses-style) head parallelism, and the 2-D hybrid of it with the ring.

Ulysses: every rank holds a shard of the sequence for all ``H`` heads. One ``all_to_all_single``
turns that into the whole sequence for ``H / N`` heads; each rank runs ordinary attention (any
mask, no global-position bookkeeping: it sees the whole sequence), and a second all-to-all turns
the output back into sequence shards. The all-to-all is its own autograd function (its backward
is the inverse all-to-all), so gradients need nothing more.

Hybrid: ranks form an ``R x U`` grid. The all-to-all runs inside each group of ``U`` ranks (the
ring shard of one ring position, for ``H / U`` heads); the ring runs across the ``R`` groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ShapeError, UnsupportedError
from ..functional import attention
from ..masks import Mask
from ..shapes import repeat_kv
from . import _group
from .layout import LayoutName, ShardLayout
from .ring import _agree, _check_local, ring_attention

__all__ = ["ulysses_attention", "hybrid_attention", "make_2d_groups"]


class _SeqToHeads(torch.autograd.Function):
    """``(B, Hx, T_r, D)`` sequence shards -> ``(B, Hx / N, sum_s T_s, D)`` (shards concatenated in
    rank order) for this rank's head group; the backward is the inverse exchange."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, g: _group.Group, lengths: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        ctx.g, ctx.lengths = g, lengths
        return _seq_to_heads(x, g, lengths)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return _heads_to_seq(grad.contiguous(), ctx.g, ctx.lengths), None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, g: _group.Group, lengths: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        ctx.g, ctx.lengths = g, lengths
        return _heads_to_seq(x, g, lengths)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return _seq_to_heads(grad.contiguous(), ctx.g, ctx.lengths), None, None


def _a2a(send: Tensor, send_splits: list[int], recv_splits: list[int], g: _group.Group, what: str) -> Tensor:
    recv = torch.empty(sum(recv_splits), dtype=send.dtype, device=send.device)
    work = dist.all_to_all_single(recv, send, recv_splits, send_splits, group=g.pg, async_op=True)
    mine = send_splits[g.rank] if send_splits else 0
    _group.count_sent((send.numel() - mine) * send.element_size(), messages=g.size - 1)
    _group.wait_all([work], g, what)
    s = _group.stats()
    if s is not None:
        s.steps += 1
    return recv


def _seq_to_heads(x: Tensor, g: _group.Group, lengths: tuple[int, ...]) -> Tensor:
    b, hx, n, d = x.shape
    hg = hx // g.size
    send = x.reshape(b, g.size, hg, n, d).transpose(0, 1).contiguous().view(-1)  # (N, B, hg, T_r, D)
    recv = _a2a(send, [b * hg * n * d] * g.size, [b * hg * t * d for t in lengths], g, "the all-to-all")
    parts = [p.view(b, hg, t, d) for p, t in zip(recv.split([b * hg * t * d for t in lengths]), lengths)]
    return torch.cat(parts, dim=2)  # (B, hg, T, D)


def _heads_to_seq(x: Tensor, g: _group.Group, lengths: tuple[int, ...]) -> Tensor:
    b, hg, _, d = x.shape
    n = lengths[g.rank]
    send = torch.cat([p.reshape(-1) for p in x.split(list(lengths), dim=2)])  # rank s gets its positions
    recv = _a2a(send, [b * hg * t * d for t in lengths], [b * hg * n * d] * g.size, g, "the all-to-all")
    return recv.view(g.size, b, hg, n, d).transpose(0, 1).reshape(b, g.size * hg, n, d)  # (B, Hx, T_r, D)


def _heads_ok(q: Tensor, k: Tensor, world: int, what: str) -> None:
    if q.shape[1] % world:
        raise UnsupportedError(f"{what} splits the {q.shape[1]} query heads over {world} ranks; heads must be a "
                               f"multiple of the rank count (use ring_attention, or hybrid_attention with fewer "
                               f"head-parallel ranks)")


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None, *, group: Any = None,
                      layout: LayoutName | ShardLayout = "contiguous", score: str = "scaled_dot",
                      scale: float | None = None, impl: str = "auto", options: Mapping[str, Any] | None = None,
                      return_lse: bool = False, check: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Attention over a sharded sequence by all-to-all head parallelism (``H`` a multiple of N).

    Arguments and results as :func:`attnkit.distributed.ring_attention`. Each rank attends the
    whole sequence for ``H / N`` heads, so the mask is applied as is (any mask that does not vary
    by head). When ``Hkv`` is not a multiple of N, k/v heads are repeated to ``H`` first (a copy;
    the ring moves only the ``Hkv`` heads). Peak memory per rank holds the whole sequence's
    ``(T x T)`` tiles for ``H / N`` heads: it falls with N only through the heads.

    Shape legend: B batch, H query heads, Hkv key/value heads, T_r this rank's positions, D head dim.
    """
    g = _group.resolve(group)
    m = _check_local(q, k, v, mask, score, impl)
    lay = _agree(g, q, k, v, m, layout, score=score, scale=scale, impl=impl, return_lse=return_lse,
                 check=check, mode="ulysses")
    _heads_ok(q, k, g.size, "ulysses_attention")
    if m is not None and m.num_heads != 1:
        raise UnsupportedError(f"mask {m!r} varies by head; the all-to-all gives each rank a slice of the heads "
                               "(use ring_attention)")
    with _group.fail_fast():  # from here on the ranks proceed together: a failure is published
        return _ulysses(q, k, v, m, g, lay, score, scale, impl, options, return_lse)


def _ulysses(q: Tensor, k: Tensor, v: Tensor, m: Mask | None, g: _group.Group, lay: ShardLayout, score: str,
             scale: float | None, impl: str, options: Mapping[str, Any] | None,
             return_lse: bool) -> Tensor | tuple[Tensor, Tensor]:
    lengths = tuple(lay.local_length(r) for r in range(g.size))
    if k.shape[1] % g.size:
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    order = torch.cat([lay.positions(r, q.device) for r in range(g.size)])  # global position of each gathered row
    natural = bool((order == torch.arange(lay.length, device=q.device)).all())
    inv = torch.argsort(order)
    qh, kh, vh = (_SeqToHeads.apply(t, g, lengths) for t in (q, k, v))  # (B, H/N, T, D) in rank order
    if not natural:
        qh, kh, vh = (t.index_select(2, inv) for t in (qh, kh, vh))  # global order
    if m is not None:
        m.validate(lay.length, lay.length, q.shape[0], q.shape[1])
    res = attention(qh, kh, vh, m, score=score, scale=scale, impl=impl, options=options, return_lse=return_lse)
    out, lse = res if return_lse else (res, None)
    if not natural:
        out = out.index_select(2, order)
        lse = None if lse is None else lse.index_select(2, order)
    out = _HeadsToSeq.apply(out, g, lengths)
    if lse is None:
        return out
    return out, _HeadsToSeq.apply(lse.unsqueeze(-1), g, lengths).squeeze(-1)


def make_2d_groups(ring_size: int, head_size: int) -> tuple[Any, Any]:
    """Split the default group into an ``R x U`` grid (``R = ring_size``, ``U = head_size``):
    rank ``r * U + u`` is at ring position ``r`` and head position ``u``. Returns this rank's
    ``(ring_group, head_group)``. Every rank must call it (it creates every subgroup)."""
    world = dist.get_world_size()
    if ring_size * head_size != world:
        raise ShapeError(f"ring_size x head_size = {ring_size} x {head_size} must equal the world size {world}")
    me = dist.get_rank()
    ring_group = head_group = None
    for u in range(head_size):
        pg = dist.new_group([r * head_size + u for r in range(ring_size)])
        if me % head_size == u:
            ring_group = pg
    for r in range(ring_size):
        pg = dist.new_group([r * head_size + u for u in range(head_size)])
        if me // head_size == r:
            head_group = pg
    return ring_group, head_group


def hybrid_layout(length: int, ring_size: int, head_size: int,
                  layout: LayoutName | ShardLayout = "zigzag") -> ShardLayout:
    """The layout of the hybrid: ``layout`` over the ring positions, each ring shard split into
    ``head_size`` pieces (rank ``r * U + u`` holds piece ``u`` of ring shard ``r``)."""
    return ShardLayout.build(layout, length, ring_size).subdivide(head_size)


def hybrid_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None, *, ring_group: Any,
                     head_group: Any, layout: LayoutName | ShardLayout = "zigzag", score: str = "scaled_dot",
                     scale: float | None = None, impl: str = "blockwise", options: Mapping[str, Any] | None = None,
                     return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Attention on an ``R x U`` grid of ranks (:func:`make_2d_groups`): all-to-all over heads
    inside ``head_group`` (``U`` ranks), ring attention across ``ring_group`` (``R`` ranks).

    Inputs are this rank's shard under :func:`hybrid_layout` (``layout`` over the ring, each ring
    shard split in ``U``); shard them with ``shard(x, hybrid_layout(T, R, U), rank=dist.get_rank(),
    world=R * U)``. Arguments and results otherwise as :func:`ring_attention`.

    Shape legend: B batch, H query heads, Hkv key/value heads, T_r this rank's positions, D head dim.
    """
    hg = _group.resolve(head_group)
    _group.resolve(ring_group)  # refuses a group this process is not in
    m = _check_local(q, k, v, mask, score, impl)
    _heads_ok(q, k, hg.size, "hybrid_attention")
    if m is not None and m.num_heads != 1:
        raise UnsupportedError(f"mask {m!r} varies by head; the all-to-all gives each rank a slice of the heads")
    # the head group learns the ring shard's piece lengths (and checks the call) before any data moves
    descs = _group.agree(hg, {"T_r": q.shape[2], "shape": [q.shape[0], q.shape[1], k.shape[1], q.shape[3],
                                                           v.shape[3]], "dtype": str(q.dtype)},
                         same=["shape", "dtype"])
    lengths = tuple(d["T_r"] for d in descs)
    if k.shape[1] % hg.size:
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    qh, kh, vh = (_SeqToHeads.apply(t, hg, lengths) for t in (q, k, v))  # (B, H/U, T_ring_r, D)
    res = ring_attention(qh, kh, vh, m, group=ring_group, layout=layout, score=score, scale=scale, impl=impl,
                         options=options, return_lse=return_lse)
    out, lse = res if return_lse else (res, None)
    out = _HeadsToSeq.apply(out, hg, lengths)
    if lse is None:
        return out
    return out, _HeadsToSeq.apply(lse.unsqueeze(-1), hg, lengths).squeeze(-1)

