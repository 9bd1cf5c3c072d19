"""Greedy and beam-search decoding for any :class:`~attnkit.apps.translation.models.Translator`.

Both return ids ``(B, T)`` that start after ``<s>``, end with ``</s>`` where the model produced
it and are ``<pad>`` after it (``<s>`` and ``<pad>`` are never emitted before). ``use_cache=False``
recomputes the whole prefix with a full forward at every step (the reference that cached decoding
must equal). Call them with the model in eval mode.

:func:`beam_hypotheses` returns all ``K`` hypotheses with their ranking scores; ``constrain`` lets a
caller rule tokens out (a vocabulary larger than the embedding's, no repeated n-grams, ...).

Shape legend: B batch, K beam size, S source length, T output length, V vocabulary (or any
output size the model's ``step`` returns).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ...errors import AttnKitError
from .models import Translator
from .tokenizer import BOS, EOS, PAD

__all__ = ["greedy", "beam_search", "beam_hypotheses"]


def _allowed(logits: Tensor) -> Tensor:
    """``logits (N, V)`` with ``<pad>`` and ``<s>`` ruled out (they are never emitted)."""
    logits = logits.float().clone()
    logits[:, PAD] = float("-inf")
    logits[:, BOS] = float("-inf")
    return logits


def _finish(out: list[Tensor], batch: int) -> Tensor:
    if not out:
        return torch.full((batch, 0), PAD, dtype=torch.long)
    return torch.stack(out, dim=1)  # (B, T)


@torch.no_grad()
def greedy(model: Translator, src: Tensor, src_mask: Tensor, max_len: int, *, use_cache: bool = True) -> Tensor:
    """The most likely token at every step: ids ``(B, T <= max_len)``."""
    if max_len < 1:
        raise AttnKitError(f"max_len must be >= 1; got {max_len}")
    b = src.shape[0]
    tok = torch.full((b,), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    state = model.start(src, src_mask) if use_cache else None
    prefix = tok.unsqueeze(1)  # (B, 1)
    out: list[Tensor] = []
    for _ in range(max_len):
        logits = model.step(state, tok) if state is not None else model(src, src_mask, prefix)[:, -1]  # (B, V)
        tok = _allowed(logits).argmax(-1).masked_fill(done, PAD)  # (B,)
        out.append(tok)
        done |= tok == EOS
        prefix = torch.cat((prefix, tok.unsqueeze(1)), dim=1)
        if bool(done.all()):
            break
    return _finish(out, b)


@torch.no_grad()
def beam_search(model: Translator, src: Tensor, src_mask: Tensor, max_len: int, *, beam: int = 4,
                length_penalty: float = 1.0,
                constrain: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """The best of ``beam`` hypotheses kept at every step, ranked at the end by
    ``log p / length ** length_penalty``: ids ``(B, T <= max_len)``. ``beam=1`` is greedy."""
    return beam_hypotheses(model, src, src_mask, max_len, beam=beam, length_penalty=length_penalty,
                           constrain=constrain)[0][:, 0]


@torch.no_grad()
def beam_hypotheses(model: Translator, src: Tensor, src_mask: Tensor, max_len: int, *, beam: int = 4,
                    length_penalty: float = 1.0,
                    constrain: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """All ``beam`` hypotheses, best first: ids ``(B, K, T <= max_len)`` and their ranking scores
    ``log p / length ** length_penalty`` ``(B, K)`` (``-inf`` for a hypothesis that never had a
    finite score). ``constrain(logp (B*K, V), prefixes (B*K, t)) -> logp`` may set the
    log-probabilities of tokens it rules out to ``-inf`` (rows ``b*K + j``; it is not asked about
    finished hypotheses, which continue with ``<pad>`` at no cost)."""
    if beam < 1:
        raise AttnKitError(f"beam must be >= 1; got {beam}")
    if max_len < 1:
        raise AttnKitError(f"max_len must be >= 1; got {max_len}")
    b, k, dev = src.shape[0], beam, src.device
    state = model.start(src.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0))  # rows b*K + j
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live hypothesis at first
    tok = torch.full((b * k,), BOS, dtype=torch.long, device=dev)
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, device=dev)
    seqs = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
    for _ in range(max_len):
        logp = torch.log_softmax(_allowed(model.step(state, tok)), dim=-1)  # (B*K, V)
        if constrain is not None:
            logp = constrain(logp, seqs)
        # a finished hypothesis continues with <pad> at no cost and nothing else
        logp[done] = float("-inf")
        logp[done, PAD] = 0.0
        v = logp.shape[-1]
        cand = (scores.reshape(-1, 1) + logp).reshape(b, k * v)  # (B, K*V)
        scores, flat = cand.topk(k, dim=-1)  # (B, K)
        origin = flat // v + torch.arange(b, device=dev).unsqueeze(1) * k  # (B, K) rows to keep
        index = origin.reshape(-1)
        tok = (flat % v).reshape(-1)  # (B*K,)
        model.reorder(state, index)
        done, lengths = done[index], lengths[index]
        lengths = lengths + (~done).float()
        done = done | (tok == EOS)
        seqs = torch.cat((seqs[index], tok.unsqueeze(1)), dim=1)
        if bool(done.all()):
            break
    final = scores / lengths.reshape(b, k).clamp(min=1) ** length_penalty  # (B, K)
    final, order = final.sort(dim=-1, descending=True, stable=True)  # ties keep the earlier hypothesis
    rows = (order + torch.arange(b, device=dev).unsqueeze(1) * k).reshape(-1)
    return seqs[rows].reshape(b, k, -1), final
