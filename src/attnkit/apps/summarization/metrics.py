"""Summary quality: ROUGE-1/2/L F1 from the ``rouge-score`` package (Porter stemming on), and how
abstractive the summaries are: the novel n-gram rate (summary n-grams absent from the source) and
the copy rate (summary words present in the source)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from ..translation.data import DataMissing
from .data import words

__all__ = ["require_rouge", "rouge", "novel_ngram_rate", "copy_rate", "lead"]


def require_rouge() -> None:
    """A :class:`DataMissing` naming the install command when ``rouge-score`` is missing."""
    if importlib.util.find_spec("rouge_score") is None:
        raise DataMissing("summarization metrics need the package 'rouge-score', which is not installed; "
                          "expected it installed: run 'make data' (or pip install rouge-score)")


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (0-100) of ``hyps`` against ``refs``."""
    require_rouge()
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"hyps and refs must be non-empty and of one length; got {len(hyps)} and {len(refs)}")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hyps, refs):
        scores = scorer.score(r, h)  # (target, prediction)
        for k in sums:
            sums[k] += scores[k].fmeasure
    return {k: 100 * v / len(hyps) for k, v in sums.items()}


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def novel_ngram_rate(summaries: Sequence[str], sources: Sequence[str], n: int) -> float:
    """The share (0-1) of the summaries' n-grams that never occur in their source."""
    novel = total = 0
    for s, src in zip(summaries, sources):
        have = set(_ngrams(words(src), n))
        grams = _ngrams(words(s), n)
        novel += sum(g not in have for g in grams)
        total += len(grams)
    return novel / total if total else 0.0


def copy_rate(summaries: Sequence[str], sources: Sequence[str]) -> float:
    """The share (0-1) of summary words that occur in their source."""
    return 1.0 - novel_ngram_rate(summaries, sources, 1)


def lead(text: str, n_words: int) -> str:
    """The lead baseline: the first ``n_words`` words of ``text``."""
    return " ".join(words(text)[:n_words])
