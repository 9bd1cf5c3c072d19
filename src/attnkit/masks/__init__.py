"""Attention masks: typed, composable, frozen objects. ``True`` means *attend*.

A mask is a predicate ``mod(b, h, i, j, lq, lk) -> bool`` over batch ``b``, head ``h``, query
position ``i`` and key position ``j``, evaluated on broadcastable ``int64`` index tensors. From
that one predicate every implementation gets what it needs:

* ``mask.dense(lq, lk)``: the boolean grid, for the reference implementation, tests and plots;
* ``mask.blocks(lq, lk, block_q, block_k)``: a :class:`BlockMask` classifying every
  ``(block_q, block_k)`` tile as empty / partial / full, for block-skipping implementations
  (computed analytically for structured masks, so it costs no ``lq x lk`` buffer);
* ``mask.mask_mod(lq, lk)``: a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)``.

Masks combine with ``&`` (both allow), ``|`` (either allows) and ``~`` (negation)::

    >>> from attnkit import masks
    >>> m = masks.causal() & masks.window(1)
    >>> print(masks.to_string(m.dense(4, 4)))
    1 0 0 0
    1 1 0 0
    0 1 1 0
    0 0 1 1

Alignment when ``lq != lk``: positional masks (``causal``, ``window``, ``dilated``,
``global_tokens``) align the *last* query with the *last* key by default (``align="bottom_right"``,
as in KV-cached decoding: query ``i`` sits at key position ``i + lk - lq``). With
``align="top_left"`` query ``i`` sits at key position ``i``. A query row that may attend to no
key at all yields zero weights and a zero output in every implementation, never NaN.

Shape legend: B batch, H heads, lq (T) query length, lk (S) key length.
"""

from . import patterns
from .base import (
    EMPTY,
    FULL,
    PARTIAL,
    Align,
    And,
    Full,
    Mask,
    ModFn,
    Not,
    Or,
    as_mask,
    full,
    to_string,
)
from .data import (
    BlockSparse,
    DenseMask,
    FromMod,
    KeyMask,
    Padding,
    Random,
    block_sparse,
    from_key_padding,
    from_mod,
    from_tensor,
    padding,
    random,
)
from .plan import BlockMask, from_flex
from .positional import Causal, Dilated, GlobalTokens, Window, causal, dilated, global_tokens, window
from .spatial import Neighborhood2D, neighborhood_2d

__all__ = [
    "Align",
    "ModFn",
    "patterns",
    "EMPTY",
    "PARTIAL",
    "FULL",
    "Mask",
    "BlockMask",
    "Full",
    "Causal",
    "Window",
    "Dilated",
    "GlobalTokens",
    "Neighborhood2D",
    "Random",
    "BlockSparse",
    "Padding",
    "KeyMask",
    "DenseMask",
    "FromMod",
    "And",
    "Or",
    "Not",
    "full",
    "causal",
    "window",
    "dilated",
    "global_tokens",
    "neighborhood_2d",
    "random",
    "block_sparse",
    "padding",
    "from_key_padding",
    "from_tensor",
    "from_mod",
    "as_mask",
    "to_string",
    "from_flex",
]
