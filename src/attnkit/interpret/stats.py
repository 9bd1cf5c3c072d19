"""Summary statistics of every attention head of one input.

Each statistic is a ``(L, H)`` tensor averaged over the (real) query tokens:

* ``entropy``: ``-sum_j w_ij log w_ij`` in nats (0 = one key; ``log S`` = uniform);
* ``distance``: the expected ``|i - j|`` (how far a head looks);
* ``cls`` / ``sep``: the weight on ``[CLS]`` / ``[SEP]`` tokens (BERT heads park attention there);
* ``self``: the weight of each token on itself;
* ``max``: the largest single weight (peakedness).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["HeadStats", "head_stats"]

STAT_NAMES = ("entropy", "distance", "cls", "sep", "self", "max")


@dataclass(frozen=True)
class HeadStats:
    """Per-head statistics, each ``(L, H)`` (see the module docstring)."""

    entropy: Tensor
    distance: Tensor
    cls: Tensor
    sep: Tensor
    self: Tensor
    max: Tensor

    def as_dict(self) -> dict[str, list[list[float]]]:
        return {name: getattr(self, name).tolist() for name in STAT_NAMES}

    def table(self) -> str:
        """A Markdown table, one row per (layer, head)."""
        lines = ["| layer | head | " + " | ".join(STAT_NAMES) + " |", "|" + "---|" * (2 + len(STAT_NAMES))]
        n_layers, n_heads = self.entropy.shape
        for ell in range(n_layers):
            for h in range(n_heads):
                vals = " | ".join(f"{getattr(self, s)[ell, h].item():.3f}" for s in STAT_NAMES)
                lines.append(f"| {ell} | {h} | {vals} |")
        return "\n".join(lines)

    def summary(self) -> str:
        """The heads with the most extreme statistics, one line each."""
        def where(t: Tensor, largest: bool) -> str:
            flat = int(t.argmax() if largest else t.argmin())
            ell, h = divmod(flat, t.shape[1])
            return f"layer {ell} head {h} ({t[ell, h].item():.3f})"

        return "\n".join([
            f"sharpest head (lowest entropy): {where(self.entropy, False)}",
            f"broadest head (highest entropy): {where(self.entropy, True)}",
            f"longest reach (mean distance): {where(self.distance, True)}",
            f"most [CLS]-focused: {where(self.cls, True)}",
            f"most [SEP]-focused: {where(self.sep, True)}",
            f"most self-focused: {where(self.self, True)}",
        ])


def head_stats(attentions: Tensor | Sequence[Tensor], tokens: Sequence[str] | None = None, *,
               cls_tokens: Sequence[str] = ("[CLS]",), sep_tokens: Sequence[str] = ("[SEP]",)) -> HeadStats:
    """Statistics of self-attention weights ``(L, H, T, T)`` (one input, no padding).

    Without ``tokens``, position 0 counts as ``[CLS]`` and position ``T - 1`` as ``[SEP]``.
    """
    a = torch.stack(list(attentions)) if not isinstance(attentions, Tensor) else attentions
    if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"attentions must be (L, H, T, T) for one input; got shape {tuple(a.shape)}")
    a = a.detach().to(torch.float64)  # (L, H, T, T)
    t = a.shape[-1]
    if tokens is not None and len(tokens) != t:
        raise ShapeError(f"tokens has {len(tokens)} entries; the weights cover {t} tokens")
    toks = list(tokens) if tokens is not None else None
    cls_pos = [i for i, s in enumerate(toks) if s in cls_tokens] if toks else [0]
    sep_pos = [i for i, s in enumerate(toks) if s in sep_tokens] if toks else [t - 1]
    idx = torch.arange(t, dtype=torch.float64)
    dist = (idx.view(-1, 1) - idx.view(1, -1)).abs()  # (T, T)
    ent = torch.special.entr(a).sum(-1)  # (L, H, T): -sum a log a, one pass, 0 log 0 = 0
    return HeadStats(
        entropy=ent.mean(-1),
        distance=torch.einsum("lhij,ij->lhi", a, dist).mean(-1),  # no (L, H, T, T) temporary
        cls=a[..., cls_pos].sum(-1).mean(-1),
        sep=a[..., sep_pos].sum(-1).mean(-1),
        self=a.diagonal(dim1=-2, dim2=-1).mean(-1),
        max=a.amax(-1).mean(-1),
    )
