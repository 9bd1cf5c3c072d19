"""Batches of the sentiment models from the cached MiniLM features: per model input kind (see
:mod:`.models`) the padded token states, intermediate states, WordPiece ids or review sentences of
the chosen texts, with the lexical score where a fusion model reads one; the training batches and
the predicted probabilities of a model.

Shape legend: B texts, T tokens, S sentences, C MiniLM width.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import AttnKitError
from .features import Features

__all__ = ["batch_of", "review_batch", "pad_rows", "train_batches", "cross_entropy_loss", "positive_probs"]


def pad_rows(rows: Sequence[Tensor], fill: float | int = 0) -> tuple[Tensor, Tensor]:
    """``rows`` of ``(T_i, ...)`` -> padded ``(B, T, ...)`` and mask ``(B, T)`` (True = real)."""
    t = max(1, max(len(r) for r in rows))
    out = rows[0].new_full((len(rows), t, *rows[0].shape[1:]), fill)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


def _text_tokens(feats: Features, text: int, field: Tensor) -> Tensor:
    units = feats.units(text)
    return field[int(feats.unit_offsets[units.start]): int(feats.unit_offsets[units.stop])]


def batch_of(feats: Features, texts: Sequence[int], kind: str, lex: Tensor | None = None) -> dict[str, Tensor]:
    """The batch of the given texts for a model reading ``input_kind`` ``kind`` (see :mod:`.models`);
    ``lex (N_text,)``, when given, adds each text's lexical score (``han-lex``, ``minilm-ft-lex``)."""
    if kind == "review":
        sents = [[feats.states[feats.tokens(u)] for u in feats.units(t)] for t in texts]
        batch = review_batch(sents)
        if lex is not None:
            batch["lex"] = lex[list(texts)]
        return batch
    if kind == "ids":
        ids, mask = pad_rows([_text_tokens(feats, t, feats.ids).long() for t in texts])
        return {"ids": ids, "mask": mask}
    if kind == "mid":
        if feats.mid is None or feats.mid_layer is None:
            raise AttnKitError("the cached features hold no intermediate states (minilm-ft runs on sentences only)")
        x, mask = pad_rows([_text_tokens(feats, t, feats.mid) for t in texts])
        batch = {"mid": x.float(), "mask": mask, "mid_layer": torch.tensor(feats.mid_layer)}
        if lex is not None:
            batch["lex"] = lex[list(texts)]
        return batch
    x, mask = pad_rows([_text_tokens(feats, t, feats.states) for t in texts])
    return {"states": x.float(), "mask": mask}


def review_batch(sents: Sequence[Sequence[Tensor]]) -> dict[str, Tensor]:
    """Per review, its sentences' token states ``(T_j, C)`` -> ``states (B, S, T, C)``, ``mask
    (B, S, T)``, ``sent_mask (B, S)``."""
    s = max(len(r) for r in sents)
    t = max(len(x) for r in sents for x in r)
    c = sents[0][0].shape[-1]
    states = torch.zeros(len(sents), s, t, c)
    mask = torch.zeros(len(sents), s, t, dtype=torch.bool)
    smask = torch.zeros(len(sents), s, dtype=torch.bool)
    for i, r in enumerate(sents):
        smask[i, : len(r)] = True
        for j, x in enumerate(r):
            states[i, j, : len(x)] = x.float()
            mask[i, j, : len(x)] = True
    return {"states": states, "mask": mask, "sent_mask": smask}


def train_batches(feats: Features, labels: Sequence[int], idx: list[int], kind: str, batch_size: int,
             lex: Tensor | None = None):
    def make(gen: torch.Generator) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        order = torch.randperm(len(idx), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chosen = [idx[j] for j in order[i: i + batch_size]]
            yield batch_of(feats, chosen, kind, lex), torch.tensor([labels[j] for j in chosen])

    return make


def cross_entropy_loss(model: nn.Module, batch: tuple[dict[str, Tensor], Tensor]) -> tuple[Tensor, int]:
    x, y = batch
    logits, _ = model(x)
    return F.cross_entropy(logits, y), len(y)


@torch.no_grad()
def positive_probs(model: nn.Module, feats: Features, idx: Sequence[int], kind: str, batch_size: int = 64,
           lex: Tensor | None = None) -> Tensor:
    """P(positive) of each text ``(N,)``."""
    model.eval()
    bs = 16 if kind == "review" else batch_size
    out = [torch.softmax(model(batch_of(feats, idx[i: i + bs], kind, lex))[0], -1)[:, 1]
           for i in range(0, len(idx), bs)]
    return torch.cat(out) if out else torch.zeros(0)
