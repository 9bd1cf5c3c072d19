"""Lexical baselines without attention or pretrained states: word uni- and bigrams, linear models.

* ``tfidf-lr``: TF-IDF of uni+bigrams (sublinear term frequency ``1 + ln tf``, smoothed idf
  ``ln((1 + n) / (1 + df)) + 1``, rows L2-normalised) and scikit-learn's logistic regression. Its
  inverse regularisation ``C`` is chosen from :data:`C_GRID` on the validation fold (fit on the
  training folds, the best validation accuracy wins, the smaller ``C`` on ties), then the model is
  refit on training + validation folds with that ``C``.
* ``nbsvm``: NB-SVM (Wang & Manning 2012) with the paper's settings: binarised uni+bigram counts
  scaled by the naive-Bayes log-count ratio ``r = ln((p / |p|_1) / (q / |q|_1))`` (``p``, ``q``:
  1 + the per-class feature counts), a linear SVM (squared hinge, ``C = 1``) on the scaled
  features, and the weights interpolated towards their mean magnitude,
  ``w' = (1 - beta) * mean|w| + beta * w`` with ``beta = 0.25``.

Both end as one weight per n-gram over a vectorised text (``tfidf-lr``: the TF-IDF row;
``nbsvm``: the binary row, with ``r`` folded into the weight), so a fitted model is
``(vocabulary, weights, intercept[, idf])``; :meth:`LexicalModel.scores` gives the logit of
the positive class of each text. The texts are already tokenised (lower case, punctuation split
off by spaces), so a token is any run of non-space characters. NB-SVM's score is an SVM margin,
not a calibrated log-odds: its probability (the logistic of the margin) orders texts but is not
a calibrated probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import AttnKitError
from .models import LEXICAL_MODELS

__all__ = ["LEXICAL_MODELS", "C_GRID", "NBSVM_C", "NBSVM_BETA", "LexicalModel", "fit_lexical", "cross_fit_scores"]

C_GRID = (1.0, 10.0, 100.0)  # tfidf-lr: candidates for C, chosen on the validation fold
NBSVM_C = 1.0
NBSVM_BETA = 0.25
NGRAMS = (1, 2)
TOKEN_PATTERN = r"\S+"


def _check_kind(kind: str) -> str:
    if kind not in LEXICAL_MODELS:
        raise AttnKitError(f"lexical model kind {kind!r} is not known; expected one of {', '.join(LEXICAL_MODELS)}")
    return kind


def _counts(texts: Sequence[str], vocabulary: dict[str, int] | None = None, binary: bool = False):
    """Uni+bigram counts ``(N, V)`` (scipy CSR) and the vocabulary (term -> column)."""
    from sklearn.feature_extraction.text import CountVectorizer

    texts = _texts(texts, "texts")
    v = CountVectorizer(ngram_range=NGRAMS, token_pattern=TOKEN_PATTERN, lowercase=True, binary=binary,
                        vocabulary=vocabulary, dtype=np.float64)
    x = v.fit_transform(list(texts)) if vocabulary is None else v.transform(list(texts))
    return x.tocsr(), dict(v.vocabulary_)


def _tfidf(counts, idf: np.ndarray):
    """Sublinear TF times idf, rows L2-normalised (a copy)."""
    from sklearn.preprocessing import normalize

    x = counts.copy()
    x.data = 1.0 + np.log(x.data)
    x = x.multiply(idf[None, :]).tocsr()
    return normalize(x, norm="l2", copy=False)


@dataclass
class LexicalModel:
    """A fitted lexical model: ``weights (V,)`` over the vectorised text, ``intercept``, ``idf (V,)``
    for ``tfidf-lr`` (None for ``nbsvm``), the vocabulary (term -> column), and how it was fitted."""

    kind: str
    vocabulary: dict[str, int]
    weights: np.ndarray
    intercept: float
    idf: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        v = len(self.vocabulary)
        if self.weights.shape != (v,) or (self.idf is not None and self.idf.shape != (v,)):
            raise AttnKitError(f"weights {self.weights.shape} and idf {None if self.idf is None else self.idf.shape} "
                               f"must both have shape ({v},), the vocabulary size")
        if (self.kind == "tfidf-lr") != (self.idf is not None):
            raise AttnKitError(f"idf is required for tfidf-lr and absent for nbsvm; got kind {self.kind!r} with idf "
                               f"{'given' if self.idf is not None else 'None'}")

    def vectorize(self, texts: Sequence[str]):
        """The rows the weights apply to ``(N, V)`` (scipy CSR)."""
        counts, _ = _counts(texts, self.vocabulary, binary=self.kind == "nbsvm")
        return counts if self.idf is None else _tfidf(counts, self.idf)

    def scores(self, texts: Sequence[str]) -> Tensor:
        """The positive-class score (logit; for ``nbsvm`` the SVM margin) of each text ``(N,)`` float32."""
        s = self.vectorize(texts) @ self.weights + self.intercept
        return torch.from_numpy(np.asarray(s, dtype=np.float32).reshape(-1))

    def tensors(self) -> dict[str, Tensor]:
        out = {"weights": torch.from_numpy(self.weights.astype(np.float32)),
               "intercept": torch.tensor([self.intercept], dtype=torch.float32)}
        if self.idf is not None:
            out["idf"] = torch.from_numpy(self.idf.astype(np.float32))
        return out

    def save(self, folder: str | Path) -> None:
        """``model.safetensors`` (weights, intercept, idf) and ``vocabulary.json`` (terms by column)."""
        from ..trainer import save_weights, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        terms = [""] * len(self.vocabulary)
        for term, j in self.vocabulary.items():
            terms[j] = term
        write_json(folder / "vocabulary.json", {"kind": self.kind, "terms": terms})
        save_weights(folder / "model.safetensors", self.tensors())

    @classmethod
    def load(cls, folder: str | Path, info: dict[str, Any] | None = None) -> LexicalModel:
        from ..trainer import load_weights, read_json

        folder = Path(folder)
        voc = read_json(folder / "vocabulary.json")
        t = load_weights(folder / "model.safetensors")
        idf = t["idf"].double().numpy() if "idf" in t else None
        return cls(voc["kind"], {term: j for j, term in enumerate(voc["terms"])}, t["weights"].double().numpy(),
                   float(t["intercept"][0]), idf, dict(info or {}))


def _fit_once(kind: str, texts: Sequence[str], labels: np.ndarray, c: float) -> LexicalModel:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "tfidf-lr":
        counts, vocab = _counts(texts)
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0
        clf = LogisticRegression(C=c, max_iter=5000).fit(_tfidf(counts, idf), labels)
        return LexicalModel(kind, vocab, clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), idf, {"C": c})
    x, vocab = _counts(texts, binary=True)
    p = 1.0 + np.asarray(x[labels == 1].sum(0)).ravel()
    q = 1.0 + np.asarray(x[labels == 0].sum(0)).ravel()
    r = np.log(p / p.sum()) - np.log(q / q.sum())
    svm = LinearSVC(C=c, max_iter=20000).fit(x.multiply(r[None, :]).tocsr(), labels)
    w = svm.coef_[0]
    w = (1.0 - NBSVM_BETA) * np.abs(w).mean() + NBSVM_BETA * w
    return LexicalModel(kind, vocab, w * r, float(svm.intercept_[0]), None, {"C": c, "beta": NBSVM_BETA})


def _texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise AttnKitError(f"{what} must be a sequence of str; got {type(texts).__name__}")
    return list(texts)


def _labels(labels: Sequence[int], n: int, what: str, both: bool = True) -> np.ndarray:
    y = np.asarray(list(labels), dtype=np.int64)
    if y.shape != (n,) or not np.isin(y, (0, 1)).all():
        raise AttnKitError(f"{what} must be {n} labels in {{0, 1}}; got {len(y)} with values {sorted(set(y.tolist()))}")
    if both and len(set(y.tolist())) < 2:
        raise AttnKitError(f"{what} hold one class only; expected both 0 and 1")
    return y


def fit_lexical(kind: str, texts: Sequence[str], labels: Sequence[int], valid_texts: Sequence[str] = (),
                valid_labels: Sequence[int] = ()) -> LexicalModel:
    """Fit ``kind`` on ``texts``; with a validation set, ``tfidf-lr`` first chooses ``C`` from
    :data:`C_GRID` on it, and the final model is fit on training + validation texts.
    ``info`` records the chosen ``C`` and each candidate's validation accuracy."""
    _check_kind(kind)
    texts, valid_texts = _texts(texts, "texts"), _texts(valid_texts, "valid_texts")
    y = _labels(labels, len(texts), "labels")
    yv = _labels(valid_labels, len(valid_texts), "valid_labels", both=False)
    info: dict[str, Any] = {}
    c = NBSVM_C
    if kind == "tfidf-lr":
        c = C_GRID[1]
        if len(valid_texts):
            accs = {}
            for cand in C_GRID:
                s = _fit_once(kind, texts, y, cand).scores(valid_texts).numpy()
                accs[cand] = float(((s > 0).astype(np.int64) == yv).mean())
            c = max(C_GRID, key=lambda k: (accs[k], -k))
            info["valid_accuracy_by_C"] = {str(k): v for k, v in accs.items()}
    if len(valid_texts):
        texts = texts + valid_texts
        y = np.concatenate([y, yv])
    model = _fit_once(kind, texts, y, c)
    model.info.update(info)
    return model


def cross_fit_scores(kind: str, texts: Sequence[str], labels: Sequence[int], groups: Sequence[int],
                     c: float | None = None) -> Tensor:
    """Out-of-group scores ``(N,)``: each text scored by the model fit on the texts of the other
    groups (``c``: the fixed ``C``; default the kind's preset), so that no score comes from a model
    that saw the text's label."""
    _check_kind(kind)
    texts = _texts(texts, "texts")
    y = _labels(labels, len(texts), "labels")
    g = np.asarray(list(groups))
    if g.shape != (len(texts),) or len(set(g.tolist())) < 2:
        raise AttnKitError(f"groups must give each of the {len(texts)} texts a group, at least two groups; got "
                           f"{len(g)} entries in {len(set(g.tolist()))} groups")
    c = (C_GRID[1] if kind == "tfidf-lr" else NBSVM_C) if c is None else c
    if not (isinstance(c, float | int) and math.isfinite(c) and c > 0):
        raise AttnKitError(f"c must be a positive finite number; got {c!r}")
    out = torch.full((len(texts),), math.nan)
    for k in sorted(set(g.tolist())):
        held = np.flatnonzero(g == k)
        fit = np.flatnonzero(g != k)
        m = _fit_once(kind, [texts[i] for i in fit], y[fit], float(c))
        out[torch.from_numpy(held)] = m.scores([texts[i] for i in held])
    return out
