"""Translation metrics: exact match, BLEU and chrF with ``sacrebleu`` (its default tokenisation;
the signature is reported beside each score), scores by source-length bucket, and the alignment
error of attention against an alignment known by construction.

Shape legend: L layers, H heads, T target tokens, S source tokens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from . import data as _data
from .data import DataMissing, Pair

__all__ = ["exact_match", "corpus_scores", "by_bucket", "gold_alignment", "alignment_error", "FUNCTION_WORDS",
           "require_sacrebleu"]


def require_sacrebleu() -> None:
    """A :class:`DataMissing` naming the install command when ``sacrebleu`` is missing."""
    if not _data.installed("sacrebleu"):
        raise DataMissing("BLEU and chrF need the package 'sacrebleu', which is not installed; expected it "
                          "installed: run 'make install' (or pip install 'attnkit[apps]')")


def exact_match(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference (after stripping outer spaces)."""
    if len(hyps) != len(refs) or not refs:
        raise ValueError(f"exact_match needs as many hypotheses as references (> 0); got {len(hyps)} and {len(refs)}")
    return sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / len(refs)


def corpus_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu defaults) with their signatures, and exact match."""
    require_sacrebleu()
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {"exact": exact_match(hyps, refs), "bleu": bleu.corpus_score(list(hyps), [list(refs)]).score,
            "chrf": chrf.corpus_score(list(hyps), [list(refs)]).score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def by_bucket(pairs: Sequence[Pair], hyps: Sequence[str], bucket: Callable[[int], str]) -> dict[str, dict[str, Any]]:
    """Exact match and chrF per source-length bucket: ``{bucket: {"n", "exact", "chrf"}}``, in
    order of the buckets' lower edges."""
    require_sacrebleu()
    from sacrebleu.metrics import CHRF

    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[bucket(p.src_words)].append(i)
    out = {}
    for name in sorted(groups, key=lambda s: int(s.split("-")[0].rstrip("+"))):
        idx = groups[name]
        h, r = [hyps[i] for i in idx], [pairs[i].tgt for i in idx]
        out[name] = {"n": len(idx), "exact": exact_match(h, r), "chrf": CHRF().corpus_score(h, [r]).score}
    return out


def _label_of(spans: Sequence[tuple[str, tuple[int, int]]], offset: tuple[int, int], text: str) -> str | None:
    """The component whose span holds the first non-space character of the token at ``offset``."""
    first = next((i for i in range(offset[0], offset[1]) if not text[i].isspace()), None)
    if first is None:
        return None
    return next((label for label, (a, b) in spans if a <= first < b), None)


FUNCTION_WORDS = frozenset({"and", ",", ";", "and,"})  # source tokens with no counterpart of their own


def gold_alignment(pair: Pair, src_offsets: Sequence[tuple[int, int]],
                   tgt_offsets: Sequence[tuple[int, int]]) -> list[set[int] | None]:
    """For each target token, the set of source token positions of its component (None when the
    token belongs to no component), from the pair's component spans and the token offsets. A
    source token that is only a function word ("and", a comma) counts for the components on both
    of its sides (it has no counterpart of its own; like a *possible* link of AER)."""
    src_spans = [(label, s) for label, s, _ in pair.spans]
    tgt_spans = [(label, t) for label, _, t in pair.spans]
    src_labels: list[set[str]] = [set() if (lab := _label_of(src_spans, o, pair.src)) is None else {lab}
                                  for o in src_offsets]
    function = [pair.src[a:b].strip().strip("\u2581").strip() in FUNCTION_WORDS for a, b in src_offsets]
    for j, is_function in enumerate(function):
        if not is_function:
            continue
        for step in (-1, 1):
            k = j + step
            while 0 <= k < len(function) and function[k]:
                k += step
            if 0 <= k < len(function) and not function[k]:
                src_labels[j] |= {lab for lab in src_labels[k]}
    gold: list[set[int] | None] = []
    for o in tgt_offsets:
        label = _label_of(tgt_spans, o, pair.tgt)
        gold.append(None if label is None else {j for j, labs in enumerate(src_labels) if label in labs})
    return gold


def alignment_error(weights: Tensor, gold: Sequence[set[int] | None]) -> tuple[int, int]:
    """``(errors, scored)``: target tokens whose attention argmax over source positions falls
    outside their component, out of those with a component. ``weights (T', S')``: row ``t`` is the
    step that emits target token ``t`` (rows and columns past the gold's are ignored)."""
    errors = scored = 0
    for t, g in enumerate(gold):
        if not g or t >= weights.shape[0]:
            continue
        scored += 1
        errors += int(int(weights[t].argmax()) not in g)
    return errors, scored
