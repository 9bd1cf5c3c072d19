"""Which positions of a sequence each rank holds, and the helpers that shard inputs and gather
outputs accordingly.

A :class:`ShardLayout` gives every rank a tuple of contiguous segments ``(start, stop)`` of the
global sequence (in order). Two layouts are built in:

* ``contiguous``: rank ``r`` holds the ``r``-th of ``N`` near-equal pieces;
* ``zigzag``: the sequence is cut into ``2N`` near-equal chunks and rank ``r`` holds chunks
  ``r`` and ``2N - 1 - r``, so under a causal mask every rank has the same amount of work
  (an early chunk attends to few keys, its partner late chunk to many). With T = 8, N = 2::

      positions  0 1 2 3 4 5 6 7
      rank       0 0 1 1 1 1 0 0

Lengths need not divide: chunk sizes differ by at most one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import AttnKitError, ShapeError
from . import _group

__all__ = ["ShardLayout", "shard", "gather", "global_positions"]

Segments = tuple[tuple[int, int], ...]
LayoutName = Literal["zigzag", "contiguous"]


def _cuts(n: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` near-equal pieces of ``n`` (the first ``n % parts`` one longer)."""
    base, extra = divmod(n, parts)
    cuts = [0]
    for p in range(parts):
        cuts.append(cuts[-1] + base + (1 if p < extra else 0))
    return cuts


@dataclass(frozen=True)
class ShardLayout:
    """The segments of a length-``length`` sequence held by each of ``len(segments)`` ranks.

    Example:
        >>> ShardLayout.zigzag(10, 2).segments
        (((0, 3), (8, 10)), ((3, 6), (6, 8)))
    """

    length: int
    segments: tuple[Segments, ...]
    name: str = "custom"

    def __post_init__(self):
        covered = sorted(s for segs in self.segments for s in segs if s[1] > s[0])
        pos = 0
        for a, b in covered:
            if a != pos:
                raise AttnKitError(f"layout segments must tile 0..{self.length} exactly; got {self.segments}")
            pos = b
        if pos != self.length:
            raise AttnKitError(f"layout segments must tile 0..{self.length} exactly; got {self.segments}")

    @classmethod
    def zigzag(cls, length: int, world: int) -> ShardLayout:
        """Chunks ``r`` and ``2N - 1 - r`` of ``2N`` for rank ``r`` (balanced causal work)."""
        _check_sizes(length, world)
        c = _cuts(length, 2 * world)
        segs = tuple(((c[r], c[r + 1]), (c[2 * world - 1 - r], c[2 * world - r])) for r in range(world))
        return cls(length, segs, "zigzag")

    @classmethod
    def contiguous(cls, length: int, world: int) -> ShardLayout:
        """The ``r``-th of ``N`` near-equal pieces for rank ``r``."""
        _check_sizes(length, world)
        c = _cuts(length, world)
        return cls(length, tuple(((c[r], c[r + 1]),) for r in range(world)), "contiguous")

    @classmethod
    def build(cls, kind: LayoutName | ShardLayout, length: int, world: int) -> ShardLayout:
        """``kind`` (a name or a layout) for ``length`` positions over ``world`` ranks."""
        if isinstance(kind, ShardLayout):
            if kind.length != length or kind.world != world:
                raise ShapeError(f"layout covers {kind.length} positions over {kind.world} ranks; the call has "
                                 f"{length} positions over {world} ranks")
            return kind
        if kind == "zigzag":
            return cls.zigzag(length, world)
        if kind == "contiguous":
            return cls.contiguous(length, world)
        raise AttnKitError(f"layout must be 'zigzag', 'contiguous' or a ShardLayout; got {kind!r}")

    @property
    def world(self) -> int:
        return len(self.segments)

    def local_length(self, rank: int) -> int:
        return sum(b - a for a, b in self.segments[rank])

    def positions(self, rank: int, device: torch.device | str | None = None) -> Tensor:
        """Global positions ``(T_local,)`` held by ``rank``, in local order."""
        parts = [torch.arange(a, b, device=device) for a, b in self.segments[rank]]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)

    def subdivide(self, parts: int) -> ShardLayout:
        """Split every rank's positions (in local order) into ``parts`` near-equal pieces: rank
        ``r * parts + u`` of the result holds piece ``u`` of rank ``r``. Used by the hybrid layout
        (the ring runs over the outer ranks, the all-to-all over the ``parts`` inner ones)."""
        out: list[Segments] = []
        for r in range(self.world):
            pos = self.positions(r).tolist()
            c = _cuts(len(pos), parts)
            for u in range(parts):
                out.append(_segments_of(pos[c[u]:c[u + 1]]))
        return ShardLayout(self.length, tuple(out), f"{self.name}/{parts}")


def _segments_of(pos: list[int]) -> Segments:
    segs: list[tuple[int, int]] = []
    for p in pos:
        if segs and segs[-1][1] == p:
            segs[-1] = (segs[-1][0], p + 1)
        else:
            segs.append((p, p + 1))
    return tuple(segs)


def _check_sizes(length: int, world: int) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise AttnKitError(f"length must be an int >= 0; got {length!r}")
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise AttnKitError(f"world (ranks) must be an int >= 1; got {world!r}")


def _layout_for(x_len: int, layout: LayoutName | ShardLayout, group: Any) -> tuple[ShardLayout, int]:
    g = _group.resolve(group)
    return ShardLayout.build(layout, x_len, g.size), g.rank


def shard(x: Tensor, layout: LayoutName | ShardLayout = "zigzag", *, dim: int = 2, group: Any = None,
          rank: int | None = None, world: int | None = None) -> Tensor:
    """This rank's piece of a full tensor ``x`` along ``dim`` (the sequence dim; 2 for
    ``(B, H, T, D)``, 1 for ``(B, T, E)`` or token ids ``(B, T)``).

    ``rank`` / ``world`` default to the process group's; pass them to shard without one.

    Example:
        >>> import torch
        >>> shard(torch.arange(8).view(1, 8), "zigzag", dim=1, rank=0, world=2)
        tensor([[0, 1, 6, 7]])
    """
    if not isinstance(x, Tensor):
        raise AttnKitError(f"shard takes a tensor; got {type(x).__name__}")
    dim = dim % x.dim()
    if rank is None or world is None:
        lay, r = _layout_for(x.shape[dim], layout, group)
        rank = r if rank is None else rank
    else:
        lay = ShardLayout.build(layout, x.shape[dim], world)
    if not 0 <= rank < lay.world:
        raise AttnKitError(f"rank must be in [0, {lay.world}); got {rank}")
    pieces = [x.narrow(dim, a, b - a) for a, b in lay.segments[rank]]
    return torch.cat(pieces, dim) if len(pieces) != 1 else pieces[0]


def global_positions(length: int, layout: LayoutName | ShardLayout = "zigzag", *, group: Any = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Global positions ``(T_local,)`` of this rank's shard of a length-``length`` sequence (for
    position embeddings and labels)."""
    lay, r = _layout_for(length, layout, group)
    return lay.positions(r, device)


def gather(x: Tensor, layout: LayoutName | ShardLayout = "zigzag", *, length: int, dim: int = 2,
           group: Any = None) -> Tensor:
    """The full tensor from every rank's shard ``x`` (the inverse of :func:`shard`), on every
    rank. ``length`` is the global sequence length. Not differentiable (for outputs and checks).
    """
    g = _group.resolve(group)
    lay = ShardLayout.build(layout, length, g.size)
    dim = dim % x.dim()
    if x.shape[dim] != lay.local_length(g.rank):
        raise ShapeError(f"rank {g.rank} holds {x.shape[dim]} positions along dim {dim}; the {lay.name} layout of "
                         f"{length} over {g.size} ranks gives it {lay.local_length(g.rank)}")
    most = max(lay.local_length(r) for r in range(g.size))
    xt = x.detach().movedim(dim, 0).contiguous()
    pad = torch.zeros((most - xt.shape[0], *xt.shape[1:]), dtype=xt.dtype, device=xt.device)
    buf = torch.cat([xt, pad]) if most > xt.shape[0] else xt
    bufs = [torch.empty_like(buf) for _ in range(g.size)]
    work = dist.all_gather(bufs, buf, group=g.pg, async_op=True)
    _group.wait_all([work], g, "gather")
    full = torch.empty((length, *xt.shape[1:]), dtype=xt.dtype, device=xt.device)
    for r in range(g.size):
        pos = lay.positions(r, xt.device)
        full[pos] = bufs[r][:len(pos)]
    return full.movedim(0, dim)
