"""The English-Spanish Bible verses: real text from the Debian sword modules, split by whole books
(deterministic, no verse in two splits), and a quick transformer that learns something from it."""

from __future__ import annotations

import shutil

import pytest
import torch

from attnkit.apps.translation import data
from attnkit.apps.translation.data import BIBLE_HELD_OUT, bible_pairs, bible_split, bible_verses
from attnkit.cli import main


@pytest.fixture(scope="module")
def verses(attnkit_cache):
    from conftest import require_data

    require_data(shutil.which("mod2imp") is not None, "Debian libsword-utils, sword-text-web, sword-text-sparv")
    return bible_verses()


def test_verses_are_the_real_aligned_texts(verses):
    assert 30_000 < len(verses) < 32_000
    by_key = {p.key: p for p in verses}
    assert by_key["John 11:35"].src == "Jesus wept."
    assert by_key["John 11:35"].tgt == "Y lloró Jesús."
    assert by_key["Genesis 1:1"].src.startswith("In the beginning, God created the heavens and the earth")
    assert "<" not in "".join(p.src + p.tgt for p in verses[:2000])  # markup stripped
    assert len(by_key) == len(verses)  # one pair per reference


def test_split_is_by_whole_books_and_deterministic(verses):
    splits = {s: bible_pairs(s) for s in ("train", "valid", "test")}
    keys = {s: {p.key for p in ps} for s, ps in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["valid"] and not keys["valid"] & keys["test"]
    assert sum(len(k) for k in keys.values()) == len(verses)
    books = {s: {k.rsplit(" ", 1)[0] for k in ks} for s, ks in keys.items()}
    assert books["test"] == set(BIBLE_HELD_OUT["test"]) and books["valid"] == set(BIBLE_HELD_OUT["valid"])
    assert not books["train"] & books["test"]
    assert 1000 < len(splits["test"]) < 1500
    assert [p.key for p in bible_pairs("train", 50, max_words=12, seed=3)] == \
        [p.key for p in bible_pairs("train", 50, max_words=12, seed=3)]
    assert all(len(p.src.split()) <= 12 for p in bible_pairs("train", 50, max_words=12))
    assert bible_split("I John 4:8") == "train" and bible_split("Jonah 1:1") == "test"


@pytest.mark.parametrize("key", ["Jonah", "Jonah 1", "1:1"])
def test_bad_verse_reference_is_refused(key):
    with pytest.raises(ValueError, match="is not of the form"):
        bible_split(key)


def test_missing_sword_tools_name_the_install_command(monkeypatch, attnkit_cache, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    (attnkit_cache / "translation" / "bible-en-es.tsv").unlink(missing_ok=True)
    with pytest.raises(data.DataMissing, match="make data"):
        data.require_bible()
    assert main(["train", "translation", "--data", "bible", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "libsword-utils" in err and err.count("\n") == 1


def test_quick_bible_transformer_beats_the_most_frequent_answer(verses, tmp_path):
    from attnkit.apps.translation import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, results = train(data="bible", model="transformer", quick=True, out=tmp_path / "run", progress=False,
                           max_steps=500, budget_minutes=5, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert results["data"] == "bible" and results["lang"] == "es" and results["test"]["n"] == 300
    assert results["test"]["chrf"] > results["baselines"]["most-frequent"]["chrf"] + 2
    assert set(results["time_to_valid_chrf"]) == {"20.0", "30.0", "35.0", "40.0"}
    assert "41+" in results["by_length"] or "31-40" in results["by_length"]
