"""Spatial masks: neighbourhood attention on a 2-D grid of tokens (image patches in raster order).

Each classifies its tiles analytically from the grid geometry, so block-skipping implementations
(``block_sparse``, ``blockwise``) skip the tiles no patch can see without an ``lq x lk`` buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import AttnKitError, ShapeError
from .base import EMPTY, FULL, PARTIAL, Mask, _band_kinds, _tile_ranges
from .positional import _whole


def _rectangles(first: Tensor, last: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The grid cells of raster ranges ``[first, last]`` (inclusive, ``(n,)`` each; ``last < first``
    is an empty range) as at most three rectangles each: the rest of the first row, the whole rows
    between, the start of the last row.

    Returns ``boxes (n, 3, 4)`` int64 = (row0, row1, col0, col1), inclusive, and ``valid (n, 3)`` bool.
    """
    y0, x0 = first // width, first % width  # (n,)
    y1, x1 = last // width, last % width
    one_row = y0 == y1
    boxes = torch.stack([
        torch.stack([y0, y0, x0, torch.where(one_row, x1, width - 1)], -1),  # first (or only) row
        torch.stack([y0 + 1, y1 - 1, torch.zeros_like(x0), torch.full_like(x0, width - 1)], -1),  # whole rows
        torch.stack([y1, y1, torch.zeros_like(x0), x1], -1),  # start of the last row
    ], 1)  # (n, 3, 4)
    nonempty = last >= first
    valid = torch.stack([nonempty, nonempty & (y1 - y0 >= 2), nonempty & ~one_row], 1)  # (n, 3)
    return boxes, valid


def _axis(q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor, reach: int, step: int) -> tuple[Tensor, Tensor]:
    """For query coordinates in ``[q0, q1]`` and key coordinates in ``[k0, k1]`` (broadcast), whether
    *some* pair and whether *every* pair has a difference ``d`` with ``|d| <= reach`` and
    ``d % step == 0``. The differences form the whole integer interval ``[q0 - k1, q1 - k0]``."""
    lo, hi = q0 - k1, q1 - k0
    a, b = torch.clamp(lo, min=-reach), torch.clamp(hi, max=reach)
    some = (a <= b) & (torch.div(b, step, rounding_mode="floor") * step >= a)  # a multiple of step in [a, b]
    every = (lo >= -reach) & (hi <= reach)
    if step > 1:
        every = every & (lo == hi) & (torch.remainder(lo, step) == 0)
    return some, every


@dataclass(frozen=True)
class Neighborhood2D(Mask):
    """Patch ``(y, x)`` attends patches ``(y', x')`` with ``|y - y'| <= radius * dilation``,
    ``|x - x'| <= radius * dilation``, both differences multiples of ``dilation`` (and, when
    ``causal``, raster index ``y' * width + x'`` at most its own); the first ``extra_tokens``
    tokens attend, and are attended by, every token. See :func:`neighborhood_2d`."""

    height: int
    width: int
    radius: int
    dilation: int = 1
    causal: bool = False
    extra_tokens: int = 0

    def __post_init__(self):
        for name, minimum in (("height", 1), ("width", 1), ("radius", 0), ("dilation", 1), ("extra_tokens", 0)):
            object.__setattr__(self, name, _whole(f"neighborhood_2d {name}", getattr(self, name), minimum=minimum))
        if not isinstance(self.causal, bool):
            raise AttnKitError(f"neighborhood_2d causal must be True or False; got {self.causal!r}")

    @property
    def tokens(self) -> int:
        """Sequence length the mask applies to: ``extra_tokens + height * width``."""
        return self.extra_tokens + self.height * self.width

    def _check_size(self, lq: int, lk: int) -> None:
        if lq != self.tokens or lk != self.tokens:
            raise ShapeError(f"{self!r} needs lq = lk = extra_tokens + height * width = {self.tokens} "
                             f"(self-attention over the grid); got lq={lq}, lk={lk}")

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        self._check_size(lq, lk)

    def mod(self, b, h, i, j, lq, lk):
        self._check_size(lq, lk)
        e, w, reach, step = self.extra_tokens, self.width, self.radius * self.dilation, self.dilation
        gi, gj = torch.clamp(i - e, min=0), torch.clamp(j - e, min=0)  # grid (raster) indices
        dy, dx = gi // w - gj // w, gi % w - gj % w
        near = (dy.abs() <= reach) & (dx.abs() <= reach)
        if step > 1:
            near = near & (torch.remainder(dy, step) == 0) & (torch.remainder(dx, step) == 0)
        allowed = near | (i < e) | (j < e)
        return allowed & (j <= i) if self.causal else allowed

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        self._check_size(lq, lk)
        e, w = self.extra_tokens, self.width
        reach = self.radius * self.dilation
        r0, r1 = _tile_ranges(lq, block_q, device)  # (nQ,) token ranges of the query tiles
        c0, c1 = _tile_ranges(lk, block_k, device)  # (nK,)
        qbox, qvalid = _rectangles(torch.clamp(r0 - e, min=0), r1 - e, w)  # grid part of each tile
        kbox, kvalid = _rectangles(torch.clamp(c0 - e, min=0), c1 - e, w)
        qb, kb = qbox.view(-1, 1, 3, 1, 4), kbox.view(1, -1, 1, 3, 4)  # (nQ, nK, 3, 3, 4) pairs of rectangles
        some_y, every_y = _axis(qb[..., 0], qb[..., 1], kb[..., 0], kb[..., 1], reach, self.dilation)
        some_x, every_x = _axis(qb[..., 2], qb[..., 3], kb[..., 2], kb[..., 3], reach, self.dilation)
        pair = qvalid.view(-1, 1, 3, 1) & kvalid.view(1, -1, 1, 3)  # (nQ, nK, 3, 3) both rectangles exist
        grid_none = ~(pair & some_y & some_x).flatten(2).any(-1)  # (nQ, nK) no grid pair allowed
        grid_all = (~pair | (every_y & every_x)).flatten(2).all(-1)  # (nQ, nK) every grid pair allowed
        extra = (r0 < e).view(-1, 1) | (c0 < e).view(1, -1)  # a global query row or key column in the tile
        kinds = torch.where(grid_all, FULL, torch.where(grid_none & ~extra, EMPTY, PARTIAL)).to(torch.int8)
        kinds = kinds.view(1, 1, *kinds.shape)
        if self.causal:  # & the causal band: exact off the diagonal, a safe PARTIAL on it
            band = _band_kinds(-float("inf"), 0, 0, lq, lk, block_q, block_k, device)
            kinds = torch.where((kinds == EMPTY) | (band == EMPTY), EMPTY,
                                torch.where((kinds == FULL) & (band == FULL), FULL, PARTIAL)).to(torch.int8)
        return kinds


def neighborhood_2d(height: int, width: int, radius: int, *, dilation: int = 1, causal: bool = False,
                    extra_tokens: int = 0) -> Mask:
    """Neighbourhood attention (Hassani et al. 2023) on a ``height x width`` grid of tokens in raster
    order (token ``extra_tokens + y * width + x`` is patch ``(y, x)``): each patch attends the
    patches within Chebyshev distance ``radius`` on the grid (a ``(2 radius + 1)^2`` square, cut at
    the borders), i.e. ``|y - y'| <= radius`` and ``|x - x'| <= radius``.

    ``neighborhood_2d(3, 3, 1)``, 9 patches, corner patch 0 sees 0, 1, 3, 4::

        1 1 0 1 1 0 0 0 0
        1 1 1 1 1 1 0 0 0
        0 1 1 0 1 1 0 0 0
        1 1 0 1 1 0 1 1 0
        1 1 1 1 1 1 1 1 1
        0 1 1 0 1 1 0 1 1
        0 0 0 1 1 0 1 1 0
        0 0 0 1 1 1 1 1 1
        0 0 0 0 1 1 0 1 1

    Args:
        height, width: the grid (ints >= 1).
        radius: Chebyshev radius in grid steps (int >= 0; 0 = each patch only itself).
        dilation: every ``dilation``-th patch (dilated neighbourhood attention): offsets
            ``(k * dilation, l * dilation)`` with ``|k|, |l| <= radius``.
        causal: also require the key's raster index to be at most the query's (the part of the
            neighbourhood above and to the left, for raster-order generation).
        extra_tokens: tokens before the grid (a class token, registers) that attend every token and
            are attended by every token (causal: those before them).

    The mask applies to self-attention with ``lq = lk = extra_tokens + height * width``; other sizes
    are refused with a :class:`~attnkit.errors.ShapeError`. Its tile classification is computed from
    the geometry (exact without ``causal``; with it, tiles on the diagonal may be called partial).
    """
    return Neighborhood2D(height, width, radius, dilation, causal, extra_tokens)
