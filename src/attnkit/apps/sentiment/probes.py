"""The scikit-learn sentiment models on pooled MiniLM states: the pooled vector of each text
(``minilm-lr``: its mean token state; ``sent-mean-lr``: the mean of its sentence embeddings), the
logistic-regression fit, and the fitted regression as a torch module.

Shape legend: N texts, C MiniLM width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features

__all__ = ["unit_means", "pooled", "fit_lr", "LinearProbe"]


def unit_means(feats: Features) -> Tensor:
    """The mean last-layer state of every unit ``(N_unit, C)`` float32 (computed once per Features)."""
    if getattr(feats, "_unit_means", None) is None:
        lengths = feats.unit_offsets[1:] - feats.unit_offsets[:-1]  # (N_unit,)
        seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (N_tok,)
        sums = torch.zeros(len(lengths), feats.states.shape[1])
        for i in range(0, len(seg), 200_000):
            sums.index_add_(0, seg[i: i + 200_000], feats.states[i: i + 200_000].float())
        feats._unit_means = sums / lengths.clamp_min(1)[:, None].float()  # type: ignore[attr-defined]
    return feats._unit_means  # type: ignore[attr-defined]


def pooled(feats: Features, idx: Sequence[int], kind: str) -> Tensor:
    """Per text: ``minilm-lr`` the mean of its token states (L2-normalised), ``sent-mean-lr`` the
    mean of its normalised sentence embeddings: ``(N, C)`` float32."""
    means = unit_means(feats)
    lengths = (feats.unit_offsets[1:] - feats.unit_offsets[:-1]).float()
    rows = []
    for t in idx:
        u = feats.units(t)
        if kind == "sent-mean-lr":
            rows.append(F.normalize(means[u.start:u.stop], dim=-1).mean(0))
        else:
            w = lengths[u.start:u.stop, None]
            rows.append(F.normalize((means[u.start:u.stop] * w).sum(0) / w.sum(), dim=-1))
    return torch.stack(rows)


def fit_lr(x: Tensor, y: Sequence[int]) -> dict[str, Tensor]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000, C=1.0).fit(x.numpy(), list(y))
    return {"coef": torch.tensor(clf.coef_, dtype=torch.float32)[0], "intercept": torch.tensor(clf.intercept_,
                                                                                              dtype=torch.float32)}


class LinearProbe(nn.Module):
    """A fitted logistic regression as a torch module: ``pooled (B, C) -> logits (B, 2)``."""

    def __init__(self, dim: int = 384):
        super().__init__()
        self.coef = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.intercept = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        z = x @ self.coef + self.intercept  # (B,)
        return torch.stack([torch.zeros_like(z), z], -1)
