"""Sparse attention patterns from the literature, each one line, each an :class:`attnkit.masks.Mask`.

Every pattern composes with ``&`` / ``|`` / ``~`` like any mask, renders with ``.dense(T, S)`` and
classifies its ``(block_q, block_k)`` tiles analytically (no ``T x S`` buffer), so a
block-skipping implementation such as ``impl="block_sparse"`` costs time proportional to the
tiles it keeps::

    >>> from attnkit.masks import patterns
    >>> m = patterns.sliding_window(1, causal=True)
    >>> print(patterns.to_string(m, 4))
    1 0 0 0
    1 1 0 0
    0 1 1 0
    0 0 1 1
    >>> patterns.density(m, 4)
    0.4375

Patterns (``T`` queries and keys; densities are kept pairs / ``T^2``, exact formulas in each
docstring):

========================  =================================================  ==================
pattern                   paper                                              density ~
========================  =================================================  ==================
``sliding_window``        Longformer (Beltagy et al. 2020), Mistral          ``(2w + 1) / T``
``dilated_window``        Longformer                                         ``(2w + 1) / T``
``strided``               Sparse Transformer (Child et al. 2019)             ``(l + T / l) / T``
``fixed``                 Sparse Transformer (Child et al. 2019)             ``(l + c T / l) / T``
``global_tokens``         Longformer                                         ``2 g / T``
``longformer``            Longformer: window + global tokens                 ``(2w + 1 + 2g) / T``
``random_blocks``         BigBird (Zaheer et al. 2020), random part          ``r b / T``
``bigbird``               BigBird: window + global + random blocks           ``(w + g + r) b / T``
``from_layout``           a user-given block layout                          kept blocks / all
========================  =================================================  ==================

Positional patterns align the last query with the last key when ``T != S`` (as
:func:`attnkit.masks.causal`); block-layout patterns (``random_blocks``, ``bigbird``,
``from_layout``) index blocks from position 0 of both.

Shape legend: T queries, S keys, b block size, n = T / b blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import AttnKitError, unknown_name
from .base import DEFAULT_BLOCK, EMPTY, FULL, PARTIAL, Mask, _band_kinds, _offset, _tile_ranges
from .base import to_string as _grid_string
from .data import _hash_uniform
from .data import block_sparse as _block_sparse
from .plan import memo, tile_plan
from .positional import causal as _causal
from .positional import dilated as _dilated
from .positional import global_tokens as _global_tokens
from .positional import window as _window

__all__ = [
    "sliding_window",
    "dilated_window",
    "strided",
    "fixed",
    "global_tokens",
    "longformer",
    "random_blocks",
    "bigbird",
    "from_layout",
    "StridedDiff",
    "SameBlock",
    "SummaryColumns",
    "LayoutPattern",
    "RandomBlocks",
    "BigBird",
    "density",
    "pair_count",
    "block_layout",
    "block_density",
    "to_string",
    "PATTERNS",
    "build",
]


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AttnKitError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# new primitive masks (each with analytic tile classification)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StridedDiff(Mask):
    """Keys whose distance to the query is a multiple of ``stride``: ``(i' - j) % stride == 0``
    (``i' - j >= 0`` too when ``causal``); ``i' = i + S - T``. The "strided" head of the
    Sparse Transformer."""

    stride: int
    causal: bool = True

    def mod(self, b, h, i, j, lq, lk):
        d = i + _offset("bottom_right", lq, lk) - j
        keep = torch.remainder(d, self.stride) == 0
        return keep & (d >= 0) if self.causal else keep

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        lo_band = 0 if self.causal else -math.inf
        if self.stride == 1:  # every distance: just the (causal) band
            return _band_kinds(-math.inf, -lo_band, _offset("bottom_right", lq, lk), lq, lk,
                               block_q, block_k, device)
        off = _offset("bottom_right", lq, lk)
        r0, r1 = _tile_ranges(lq, block_q, device)
        c0, c1 = _tile_ranges(lk, block_k, device)
        dmin = (r0.view(-1, 1) + off) - c1.view(1, -1)  # (nQ, nK) smallest i' - j in the tile
        dmax = (r1.view(-1, 1) + off) - c0.view(1, -1)  # (nQ, nK) largest i' - j in the tile
        if self.causal:
            dmin = dmin.clamp(min=0)
        # the tile holds every distance in [dmin, dmax]; is one of them a multiple of stride?
        top_multiple = torch.div(dmax, self.stride, rounding_mode="floor") * self.stride
        hit = (top_multiple >= dmin) & (dmax >= dmin)
        kinds = torch.where(hit, PARTIAL, EMPTY).to(torch.int8)
        return kinds.view(1, 1, *kinds.shape)


@dataclass(frozen=True)
class SameBlock(Mask):
    """Query and key in the same length-``block`` segment: ``i' // block == j // block``
    (``i' = i + S - T``). The local head of the Sparse Transformer's fixed pattern."""

    block: int

    def mod(self, b, h, i, j, lq, lk):
        off = _offset("bottom_right", lq, lk)
        return torch.div(i + off, self.block, rounding_mode="floor") == torch.div(j, self.block, rounding_mode="floor")

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        off = _offset("bottom_right", lq, lk)
        r0, r1 = _tile_ranges(lq, block_q, device)
        c0, c1 = _tile_ranges(lk, block_k, device)
        fl = lambda x: torch.div(x, self.block, rounding_mode="floor")  # noqa: E731
        q_lo, q_hi = fl(r0 + off).view(-1, 1), fl(r1 + off).view(-1, 1)  # (nQ, 1) segment range
        k_lo, k_hi = fl(c0).view(1, -1), fl(c1).view(1, -1)  # (1, nK)
        meet = (q_lo <= k_hi) & (k_lo <= q_hi)
        one = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
        kinds = torch.where(one, FULL, torch.where(meet, PARTIAL, EMPTY)).to(torch.int8)
        return kinds.view(1, 1, *kinds.shape)


@dataclass(frozen=True)
class SummaryColumns(Mask):
    """The last ``width`` keys of every length-``block`` segment, attended by every query:
    ``j % block >= block - width``. The "summary" head of the Sparse Transformer's fixed pattern."""

    block: int
    width: int

    def mod(self, b, h, i, j, lq, lk):
        return (torch.remainder(j, self.block) >= self.block - self.width).expand(
            torch.broadcast_shapes(i.shape, j.shape))

    def _count_below(self, n: Tensor) -> Tensor:
        """How many summary columns lie in ``[0, n)``."""
        return (n // self.block) * self.width + (n % self.block - (self.block - self.width)).clamp(min=0)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        c0, c1 = _tile_ranges(lk, block_k, device)
        count = self._count_below(c1 + 1) - self._count_below(c0)  # (nK,)
        kinds = torch.where(count == c1 - c0 + 1, FULL, torch.where(count == 0, EMPTY, PARTIAL))
        return kinds.to(torch.int8).view(1, 1, 1, -1)


@dataclass(frozen=True, eq=False)
class LayoutPattern(Mask):
    """A block layout that depends on the problem size: ``layout_fn(nQB, nKB) -> (nQB, nKB)`` bool.
    Query block ``i // block`` attends key block ``j // block`` where the layout is True."""

    layout_fn: Callable[[int, int], Tensor]
    block: int
    name: str = "layout"

    def layout(self, lq: int, lk: int) -> Tensor:
        """The ``(ceil(lq / block), ceil(lk / block))`` bool layout (memoised with the tile plans)."""
        return memo(self, ("layout", lq, lk), lambda: self.layout_fn(math.ceil(lq / self.block),
                                                                      math.ceil(lk / self.block)).to(torch.bool))

    def _as_block_sparse(self, lq: int, lk: int) -> Mask:
        return _block_sparse(self.layout(lq, lk), self.block)

    _at_size = _as_block_sparse

    def mod(self, b, h, i, j, lq, lk):
        return self._as_block_sparse(lq, lk).mod(b, h, i, j, lq, lk)

    def tile_kinds(self, lq, lk, block_q, block_k, device=None):
        return self._as_block_sparse(lq, lk).tile_kinds(lq, lk, block_q, block_k, device)

    def __repr__(self) -> str:
        return self.name


def _pick_random(allowed: Tensor, count: int, seed: int) -> Tensor:
    """Per row of ``allowed`` (nQB, nKB), the ``count`` allowed columns with the smallest seeded
    hash (all allowed ones when fewer): a deterministic random choice without replacement."""
    nqb, nkb = allowed.shape
    if count == 0 or nkb == 0:
        return torch.zeros_like(allowed)
    qb = torch.arange(nqb).view(-1, 1)
    kb = torch.arange(nkb).view(1, -1)
    u = _hash_uniform(seed, qb, kb).masked_fill(~allowed, 2.0)  # (nQB, nKB), excluded last
    idx = u.topk(min(count, nkb), dim=-1, largest=False).indices
    picked = torch.zeros_like(allowed).scatter_(1, idx, True)
    return picked & allowed


def RandomBlocks(num_blocks: int, block: int, seed: int = 0, causal: bool = False) -> LayoutPattern:  # noqa: N802
    """The layout mask of :func:`random_blocks`."""

    def layout_fn(nqb: int, nkb: int) -> Tensor:
        allowed = torch.ones(nqb, nkb, dtype=torch.bool)
        if causal:
            allowed = torch.ones(nqb, nkb, dtype=torch.bool).tril(nkb - nqb)
        return _pick_random(allowed, num_blocks, seed)

    return LayoutPattern(layout_fn, block, f"random_blocks(r={num_blocks}, block={block}, seed={seed})")


def BigBird(block: int, window_blocks: int, global_blocks: int, random_blocks: int,  # noqa: N802
            seed: int = 0) -> LayoutPattern:
    """The layout mask of :func:`bigbird`."""
    half = window_blocks // 2

    def layout_fn(nqb: int, nkb: int) -> Tensor:
        qb = torch.arange(nqb).view(-1, 1)
        kb = torch.arange(nkb).view(1, -1)
        first, last = (global_blocks + 1) // 2, global_blocks // 2
        g_k = (kb < first) | (kb >= nkb - last)  # (1, nKB) global key blocks
        g_q = (qb < first) | (qb >= nqb - last)  # (nQB, 1) global query blocks
        win = (kb - qb).abs() <= half  # (nQB, nKB)
        fixed_part = win | g_k | g_q
        rand = _pick_random(~fixed_part, random_blocks, seed)
        return fixed_part | rand

    return LayoutPattern(layout_fn, block, f"bigbird(block={block}, w={window_blocks}, g={global_blocks}, "
                                           f"r={random_blocks}, seed={seed})")


# ----------------------------------------------------------------------------------------------
# the patterns
# ----------------------------------------------------------------------------------------------


def sliding_window(window: int, *, causal: bool = False) -> Mask:
    """Sliding window (Longformer, Beltagy et al. 2020; causal: Mistral): query ``i`` attends
    keys ``j`` with ``|i - j| <= window`` (``0 <= i - j <= window`` when ``causal``).

    Density for ``T = S > window``: kept pairs ``T (2w + 1) - w (w + 1)`` (causal:
    ``T (w + 1) - w (w + 1) / 2``) over ``T^2``, i.e. about ``(2w + 1) / T``: linear cost in T.
    """
    _positive("window", window, 0)
    return _window(window, 0 if causal else window)


def dilated_window(window: int, dilation: int, *, causal: bool = False) -> Mask:
    """Dilated sliding window (Longformer): keys ``j = i + k * dilation`` for ``|k| <= window``
    (``-window <= k <= 0`` when ``causal``); the receptive field grows by ``dilation`` at equal cost.

    Density for ``T = S > window * dilation``: kept pairs ``T (2w + 1) - d w (w + 1)`` (causal:
    ``T (w + 1) - d w (w + 1) / 2``) over ``T^2``.
    """
    _positive("window", window, 0)
    _positive("dilation", dilation)
    return _dilated(window, dilation, causal=causal)


def strided(stride: int, *, causal: bool = True) -> Mask:
    """Strided pattern (Sparse Transformer, Child et al. 2019): the previous ``stride`` positions
    (``0 <= i - j < stride``) plus every ``stride``-th one (``(i - j) % stride == 0``), the union
    of the paper's two factorised heads. ``causal=False`` mirrors both parts.

    Density (causal, ``T = S``, ``M = (T - 1) // l`` with ``l = stride``): kept pairs
    ``l T - l (l - 1) / 2 + M T - l M (M + 1) / 2`` over ``T^2``, about ``(l + T / l) / T``,
    i.e. ``O(1 / sqrt(T))`` at ``l = sqrt(T)``.
    """
    _positive("stride", stride)
    local = _window(stride - 1, 0 if causal else stride - 1)
    return local | StridedDiff(stride, causal)


def fixed(stride: int, summary: int = 1, *, causal: bool = True) -> Mask:
    """Fixed pattern (Sparse Transformer, Child et al. 2019): every position attends its own
    length-``stride`` segment plus the last ``summary`` positions ("c") of every segment, which
    carry information across segments; ``causal`` keeps ``j <= i``.

    Density for ``T = S = n l`` (``l = stride``, ``c = summary``): kept pairs
    ``T (l + 1) / 2 + c l n (n - 1) / 2`` causal, ``T l + T c (n - 1)`` otherwise, over ``T^2``;
    about ``(l + c T / l) / T`` (bidirectional).
    """
    _positive("stride", stride)
    _positive("summary", summary)
    if summary > stride:
        raise AttnKitError(f"summary must be <= stride; got summary={summary}, stride={stride}")
    m = SameBlock(stride) | SummaryColumns(stride, summary)
    return m & _causal() if causal else m


def global_tokens(indices: Sequence[int] | Tensor) -> Mask:
    """Global tokens (Longformer): the ``g`` given positions attend every key and every query
    attends them. Density for ``T = S`` and distinct indices: kept pairs ``2 g T - g^2`` over
    ``T^2``."""
    return _global_tokens(indices)


def longformer(window: int, global_indices: Sequence[int] | Tensor = (0,), *, dilation: int = 1,
               causal: bool = False) -> Mask:
    """Longformer (Beltagy et al. 2020): a (dilated) sliding window plus global tokens.

    Density for ``T = S``: at most the window's pairs (:func:`dilated_window`) plus
    ``2 g T - g^2`` for ``g`` global tokens, about ``(2w + 1 + 2g) / T``; the exact count is
    that sum minus the window pairs that touch a global row or column.
    """
    local = sliding_window(window, causal=causal) if dilation == 1 else dilated_window(window, dilation, causal=causal)
    return local | _global_tokens(indices=global_indices)


def random_blocks(num_blocks: int, block_size: int = 64, *, seed: int = 0, causal: bool = False) -> Mask:
    """Random blocks (BigBird's random part, Zaheer et al. 2020): every query block attends
    ``r = num_blocks`` key blocks drawn without replacement (seeded, deterministic); with
    ``causal`` only from key blocks at or before its own (bottom-right aligned).

    Density for ``T = S = n b`` (non-causal): ``min(r, n) / n`` = ``r b / T`` for ``r <= n``.
    """
    _positive("num_blocks", num_blocks, 0)
    _positive("block_size", block_size)
    return RandomBlocks(num_blocks, block_size, seed, causal)


def bigbird(block_size: int = 64, *, window_blocks: int = 3, global_blocks: int = 2, random_blocks: int = 3,
            seed: int = 0) -> Mask:
    """BigBird (Zaheer et al. 2020, ITC form) as a block layout: each query block attends its
    ``window_blocks`` neighbouring blocks (odd; centred), the ``global_blocks`` global blocks (the
    first ``ceil(g / 2)`` and last ``floor(g / 2)`` blocks, which also attend everything), and
    ``random_blocks`` further key blocks drawn without replacement from the rest. Defaults follow
    the paper: block 64, 3 window, 2 global, 3 random.

    Density for the defaults and ``T = S = n b`` with ``n >= 8``: kept blocks
    ``2 n + 2 (4 + r) + (n - 4) (5 + r)`` over ``n^2``; in general about ``(w + g + r) b / T``.
    """
    _positive("block_size", block_size)
    _positive("window_blocks", window_blocks)
    _positive("global_blocks", global_blocks, 0)
    _positive("random_blocks", random_blocks, 0)
    if window_blocks % 2 == 0:
        raise AttnKitError(f"window_blocks must be odd (centred window); got {window_blocks}")
    return BigBird(block_size, window_blocks, global_blocks, random_blocks, seed)


def from_layout(layout: Tensor, block_size: int | tuple[int, int]) -> Mask:
    """A user-given block layout ``(nQB, nKB)`` or per head ``(H, nQB, nKB)`` (bool): query block
    ``bi`` attends key block ``bj`` where ``layout[bi, bj]``. Density: ``layout.mean()`` when the
    blocks tile ``T`` and ``S`` exactly."""
    return _block_sparse(layout, block_size)


# ----------------------------------------------------------------------------------------------
# measuring patterns (never materialising T x S)
# ----------------------------------------------------------------------------------------------

_COUNT_BUDGET = 1 << 24  # elements evaluated per chunk when counting partial tiles


def _tile_sizes(bm, tiles: Tensor) -> Tensor:
    """Number of in-range positions of each listed tile (n,)."""
    rows = (bm.lq - tiles[:, 2] * bm.block_q).clamp(max=bm.block_q)
    cols = (bm.lk - tiles[:, 3] * bm.block_k).clamp(max=bm.block_k)
    return rows * cols


def pair_count(mask: Mask, lq: int, lk: int | None = None, *, block: int = DEFAULT_BLOCK) -> int:
    """Kept (query, key) pairs of ``mask`` at sizes ``lq x lk`` for batch 0, head 0, counted
    tile by tile (full tiles analytically, partial ones evaluated in chunks)."""
    lk = lq if lk is None else lk
    bm = tile_plan(mask, lq, lk, block, block)
    kinds = bm.kinds[:1, :1]
    full_tiles = (kinds == FULL).nonzero()
    total = int(_tile_sizes(bm, full_tiles).sum()) if len(full_tiles) else 0
    part = (kinds == PARTIAL).nonzero()
    step = max(1, _COUNT_BUDGET // (block * block))
    for start in range(0, len(part), step):
        total += int(bm.tile_mask(part[start:start + step]).sum())
    return total


def density(mask: Mask, lq: int, lk: int | None = None) -> float:
    """Fraction of kept (query, key) pairs, ``pair_count / (lq * lk)``."""
    lk = lq if lk is None else lk
    return pair_count(mask, lq, lk) / float(lq * lk)


def block_layout(mask: Mask, lq: int, lk: int | None = None, block: int = DEFAULT_BLOCK) -> Tensor:
    """``(nQB, nKB)`` bool: which ``block x block`` tiles hold a kept pair (batch 0, head 0)."""
    lk = lq if lk is None else lk
    return mask.blocks(lq, lk, block, block).kinds[0, 0] != EMPTY


def block_density(mask: Mask, lq: int, lk: int | None = None, block: int = DEFAULT_BLOCK) -> float:
    """Fraction of ``block x block`` tiles that a block-skipping kernel must compute."""
    return float(block_layout(mask, lq, lk, block).float().mean())


def to_string(mask: Mask, lq: int, lk: int | None = None) -> str:
    """The ``1`` / ``0`` picture of a small pattern (batch 0, head 0)."""
    lk = lq if lk is None else lk
    return _grid_string(mask.dense4(lq, lk)[0, 0])


# ----------------------------------------------------------------------------------------------
# patterns by name (for the command line and sweeps)
# ----------------------------------------------------------------------------------------------

PATTERNS: dict[str, Callable[..., Mask]] = {
    "sliding_window": lambda window=64, causal=False, **_: sliding_window(window, causal=causal),
    "causal_window": lambda window=64, **_: sliding_window(window, causal=True),
    "dilated_window": lambda window=16, dilation=4, causal=False, **_: dilated_window(window, dilation, causal=causal),
    "strided": lambda stride=32, causal=True, **_: strided(stride, causal=causal),
    "fixed": lambda stride=32, summary=4, causal=True, **_: fixed(stride, summary, causal=causal),
    "longformer": lambda window=64, globals_=(0,), causal=False, **_: longformer(window, globals_, causal=causal),
    "random_blocks": lambda random=3, block=64, seed=0, causal=False, **_: random_blocks(random, block, seed=seed,
                                                                                          causal=causal),
    "bigbird": lambda block=64, random=3, seed=0, **_: bigbird(block, random_blocks=random, seed=seed),
    "causal": lambda **_: _causal(),
}
"""Pattern constructors by name; each takes keyword arguments with defaults (extra ones ignored)."""


def build(name: str, **params) -> Mask:
    """The pattern ``name`` (a key of :data:`PATTERNS`) with the given parameters."""
    if name not in PATTERNS:
        raise unknown_name("pattern", name, list(PATTERNS))
    try:
        return PATTERNS[name](**params)
    except TypeError as exc:
        raise AttnKitError(f"bad parameters for pattern {name!r}: {exc}") from exc
