"""CIDEr-D (Vedantam et al. 2015), the captioning metric of the COCO evaluation server, as its
reference scorer computes it (``ciderD_scorer.py``):

1. Text: lowercased, punctuation removed, split on spaces. n-grams for n = 1..4.
2. Weights: each n-gram's count times ``log(N) - log(max(1, df))``, with ``df`` the number of
   images whose references contain it and N the number of images (``df`` from the evaluated
   corpus's own references, the "corpus" mode).
3. For each n, the similarity of a candidate to one reference is
   ``sum over the candidate's n-grams of min(w_cand, w_ref) * w_ref / (|w_cand| |w_ref|)``
   (0 when either norm is 0), times the length penalty ``exp(-delta^2 / (2 sigma^2))``, sigma 6,
   where ``delta`` is the difference of their lengths (counted, like the reference scorer, in
   bigrams: words - 1).
4. Score of an image: the mean over n of that similarity, averaged over its references, times 10.
   The corpus score is the mean over images.

Two images, each candidate equal to its reference: "a" is in every reference (weight 0), the
other 1-, 2- and 3-grams match exactly (similarity 1), there is no 4-gram (similarity 0):

>>> round(cider_d(["a cat sat", "a dog ran"], [["a cat sat"], ["a dog ran"]])[0], 6)
7.5
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ...errors import AttnKitError

__all__ = ["tokenize", "ngrams", "cider_d"]

_PUNCT = re.compile(r"[^\w\s'-]")


def tokenize(text: str) -> list[str]:
    """Lowercased words with punctuation removed."""
    return _PUNCT.sub(" ", text.lower()).split()


def ngrams(words: Sequence[str], n: int = 4) -> Counter:
    """Counts of every 1..n-gram of ``words`` (tuples of words)."""
    out: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            out[tuple(words[i: i + k])] += 1
    return out


def _vector(counts: Counter, df: Counter, log_n: float, n: int) -> tuple[list[dict], list[float], int]:
    vec: list[dict] = [{} for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        w = tf * (log_n - math.log(max(1.0, df[gram])))
        vec[k][gram] = w
        norm[k] += w * w
        if k == 1:  # the reference scorer's length: the number of bigrams
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _sim(cand: tuple, ref: tuple, n: int, sigma: float) -> list[float]:
    (vc, nc, lc), (vr, nr, lr) = cand, ref
    penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))
    out = []
    for k in range(n):
        val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
        if nc[k] != 0 and nr[k] != 0:
            val /= nc[k] * nr[k]
        out.append(val * penalty)
    return out


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], *, n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of ``candidates`` (one caption per image) against ``references`` (one or more per
    image): ``(corpus score, per-image scores)``.

    Args:
        candidates: the generated captions, one per image.
        references: for each image, its reference captions (at least one).
        n: the longest n-gram.
        sigma: the width of the Gaussian length penalty.
    """
    if len(candidates) != len(references) or not candidates:
        raise AttnKitError(f"cider_d needs one candidate per image and images > 0; got {len(candidates)} candidates "
                           f"for {len(references)} images")
    if any(isinstance(r, str) or len(r) == 0 for r in references):
        raise AttnKitError("references must hold a list of one or more captions per image; got a string or an empty "
                           "list")
    refs = [[ngrams(tokenize(r), n) for r in rs] for rs in references]
    cands = [ngrams(tokenize(c), n) for c in candidates]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_n = math.log(float(len(refs)))
    scores = []
    for c, rs in zip(cands, refs):
        vc = _vector(c, df, log_n, n)
        total = [0.0] * n
        for r in rs:
            total = [a + b for a, b in zip(total, _sim(vc, _vector(r, df, log_n, n), n, sigma))]
        scores.append(sum(total) / n / len(rs) * 10.0)
    return sum(scores) / len(scores), scores
