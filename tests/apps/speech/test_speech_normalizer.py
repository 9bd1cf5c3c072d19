"""The English text normaliser used before every WER."""

from __future__ import annotations

import pytest

from attnkit.apps.speech.normalizer import normalize_english


@pytest.mark.parametrize("text, expected", [
    ("Go forward 10 meters.", "go forward ten meters"),
    ("And Mr. John Dashwood had then leisure", "and mister john dashwood had then leisure"),
    ("Unless to be rather cold-hearted", "unless to be rather cold hearted"),
    ("Eight of spades, four of close, seven of hearts.", "eight of spades four of close seven of hearts"),
    ("the 7th and 21st of May", "the seventh and twenty first of may"),
    ("1,500 people & 3.5% more", "one thousand five hundred people and three point five percent more"),
    ("'Quoted' don't   stop!", "quoted don't stop"),
    ("Mrs. Dr. Smith", "missus doctor smith"),
    ("29340.", "two nine three four zero"),
    ("call 0425 now, 10,000 times", "call zero four two five now ten thousand times"),
    ("", ""),
])
def test_normalize_english(text, expected):
    assert normalize_english(text) == expected


def test_normalizer_makes_wer_ignore_form_only():
    jiwer = pytest.importorskip("jiwer")
    ref = "he was not an ill disposed young man"
    assert jiwer.wer(ref, normalize_english("He was not an ill-disposed young man.")) == 0
    assert jiwer.wer(ref, normalize_english("He was not an old-sposed young man.")) == pytest.approx(2 / 8)
