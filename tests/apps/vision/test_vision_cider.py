"""CIDEr-D on small cases computed by hand."""

from __future__ import annotations

import math

import pytest

from attnkit.apps.vision.cider import cider_d, ngrams, tokenize
from attnkit.errors import AttnKitError


def test_tokenize_and_ngrams():
    assert tokenize("A Sneaker, above the T-shirt.") == ["a", "sneaker", "above", "the", "t-shirt"]
    counts = ngrams(["a", "b", "a"], 2)
    assert counts == {("a",): 2, ("b",): 1, ("a", "b"): 1, ("b", "a"): 1}


def test_shorter_candidate_by_hand():
    # two images with disjoint words: every n-gram has df 1, weight log 2
    score, per = cider_d(["a b c", "e f g h"], [["a b c d"], ["e f g h"]])
    # image 1: unigrams 3/(sqrt3*2), bigrams 2/(sqrt2*sqrt3), trigrams 1/(1*sqrt2), no 4-gram;
    # lengths in bigrams 2 vs 3: penalty exp(-1/72)
    first = (3 / (math.sqrt(3) * 2) + 2 / (math.sqrt(2) * math.sqrt(3)) + 1 / math.sqrt(2) + 0) / 4
    first *= math.exp(-1 / 72) * 10
    assert per[0] == pytest.approx(first, rel=1e-12)
    assert per[1] == pytest.approx(10.0)
    assert score == pytest.approx((first + 10) / 2)


def test_counts_are_clipped_by_hand():
    # "a a a a": unigram weight 4 log2 against "a" weight log2 in the reference -> min(4l, l) * l / (4l * 2l)
    _, per = cider_d(["a a a a", "e f g h"], [["a b c d"], ["e f g h"]])
    assert per[0] == pytest.approx((1 / 8) / 4 * 10)


def test_words_in_every_reference_weigh_nothing():
    # "x" is in both images' references: idf log2 - log2 = 0; "y" and "x y" match
    _, per = cider_d(["x y", "x z"], [["x y"], ["x z"]])
    assert per == pytest.approx([5.0, 5.0])
    # one image only: every n-gram is in all references, every weight is 0
    assert cider_d(["a b"], [["a b"]])[0] == 0.0


def test_references_are_averaged():
    score, per = cider_d(["a b", "e f"], [["a b", "c d"], ["e f"]])
    assert per[0] == pytest.approx((2 + 0) / 4 / 2 * 10)
    assert per[1] == pytest.approx(2 / 4 * 10)
    assert score == pytest.approx((2.5 + 5) / 2)


def test_bad_arguments():
    with pytest.raises(AttnKitError, match="one candidate per image"):
        cider_d(["a"], [["a"], ["b"]])
    with pytest.raises(AttnKitError, match="list of one or more captions"):
        cider_d(["a"], ["a"])
