"""Number-words data: a split fixed by the number, spread over lengths, components that align."""

from __future__ import annotations

import pytest

from attnkit.apps.translation import data
from attnkit.apps.translation.data import components, length_bucket, number_pairs, number_split
from attnkit.apps.translation.tokenizer import EOS, SubwordTokenizer
from attnkit.errors import AttnKitError


def test_split_is_a_function_of_the_number():
    splits = [number_split(n) for n in range(20000)]
    assert splits == [number_split(n) for n in range(20000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert 0.04 < share["test"] < 0.06 and 0.04 < share["valid"] < 0.06


@pytest.mark.parametrize("lang", ["fr", "de"])
def test_held_out_numbers_never_in_training(lang, attnkit_cache):
    sets = {s: number_pairs(lang, s, n) for s, n in (("train", 3000), ("valid", 150), ("test", 300))}
    keys = {s: {p.key for p in pairs} for s, pairs in sets.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["valid"] and not keys["valid"] & keys["test"]
    for s, pairs in sets.items():
        assert all(number_split(int(p.key)) == s for p in pairs)
        assert len(keys[s]) == len(pairs)
    digits = {len(p.key) for p in sets["test"]}
    assert digits == {1, 2, 3, 4, 5, 6} or digits >= {3, 4, 5, 6}  # short and long numbers
    # cached: the same pairs come back
    again = number_pairs(lang, "test", 300)
    assert [(p.key, p.src, p.tgt, p.spans) for p in again] == [(p.key, p.src, p.tgt, p.spans) for p in sets["test"]]


def test_pairs_are_num2words_output(attnkit_cache):
    from num2words import num2words

    for p in number_pairs("de", "test", 50):
        assert p.src == num2words(int(p.key), lang="en") and p.tgt == num2words(int(p.key), lang="de")


@pytest.mark.parametrize("text,want", [
    ("trois cent vingt", [("uh", "trois cent"), ("ur", " vingt")]),
    ("three hundred and twenty", [("uh", "three hundred"), ("ur", " and twenty")]),
    ("dreihundertzwanzig", [("uh", "dreihundert"), ("ur", "zwanzig")]),
    ("forty-five thousand, seven hundred", [("kr", "forty-five thousand"), ("uh", ", seven hundred")]),
    ("deux cent mille un", [("kh", "deux cent"), ("kr", " mille"), ("ur", " un")]),
    ("einhunderteinstausendeins", [("kh", "einhundert"), ("kr", "einstausend"), ("ur", "eins")]),
])
def test_components(text, want):
    assert [(label, text[a:b]) for label, (a, b) in components(text)] == want


def test_spans_align_the_same_components(attnkit_cache):
    pairs = number_pairs("fr", "test", 300)
    assert sum(bool(p.spans) for p in pairs) > 0.95 * len(pairs)
    p = next(p for p in pairs if len(p.spans) == 4)
    assert [label for label, _, _ in p.spans] == ["kh", "kr", "uh", "ur"]


def test_length_buckets():
    assert [length_bucket(n) for n in (1, 4, 5, 6, 7, 10, 11, 30)] == ["1-4", "1-4", "5-6", "5-6", "7-8", "9-10",
                                                                       "11+", "11+"]


def test_bad_requests_and_missing_package(monkeypatch, attnkit_cache):
    with pytest.raises(AttnKitError, match="language 'es' is not available"):
        number_pairs("es", "test", 10)
    with pytest.raises(AttnKitError, match="split 'dev'"):
        number_pairs("fr", "dev", 10)
    monkeypatch.setattr(data, "installed", lambda name: False)
    with pytest.raises(data.DataMissing, match="run 'make data'"):
        number_pairs("fr", "test", 10)
    assert "make data" in data.data_status()["numbers"]


def test_tokenizer_roundtrip_and_batch(attnkit_cache, tmp_path):
    pairs = number_pairs("de", "train", 500)
    tok = SubwordTokenizer.train((t for p in pairs for t in (p.src, p.tgt)), 200)
    for p in number_pairs("de", "test", 50):
        assert tok.decode(tok.encode(p.tgt)) == p.tgt and tok.decode(tok.encode(p.src)) == p.src
    ids, mask = tok.batch(["one", "two hundred and five"])
    assert ids.shape[0] == 2 and mask[0].sum() < mask[1].sum() and ids[0, int(mask[0].sum()) - 1] == EOS
    tok.save(tmp_path / "t.json")
    assert SubwordTokenizer.load(tmp_path / "t.json").encode("sieben") == tok.encode("sieben")


def test_number_lists_hold_only_numbers_of_their_split(attnkit_cache):
    from attnkit.apps.translation.data import MAX_ITEMS, SEPARATOR, number_list_pairs

    train = number_list_pairs("fr", "train", 300)
    test = number_list_pairs("fr", "test", 100)
    train_numbers = {n for p in train for n in p.key.split(",")}
    for p in test:
        items = p.key.split(",")
        assert 1 <= len(items) <= MAX_ITEMS and not set(items) & train_numbers
        assert all(number_split(int(n)) == "test" for n in items)
        assert len(p.src.split(SEPARATOR)) == len(p.tgt.split(SEPARATOR)) == len(items)
        for label, (a, b), (c, d) in p.spans:  # component labels carry the item index, spans stay inside it
            i = int(label.split(".")[0])
            assert p.src[a:b].strip(" ,") in p.src.split(SEPARATOR)[i]
            assert p.tgt[c:d].strip() in p.tgt.split(SEPARATOR)[i]
    assert max(p.src_words for p in test) > 25  # long inputs exist
