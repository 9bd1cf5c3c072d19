"""Summarization data: the three loaders on small real samples, deterministic disjoint splits, and
clear errors for missing data."""

from __future__ import annotations

import ast
import gzip
import shutil
from pathlib import Path

import pytest

from attnkit.apps.summarization import data
from attnkit.apps.summarization.data import DataMissing, SummaryPair, split_of, words


def test_docstring_pair_from_a_real_stdlib_module(need_data):
    path = data.stdlib_dir() / "textwrap.py"
    need_data(path.is_file(), "the Python standard library sources")
    tree = ast.parse(path.read_text())
    docs = dict(data._docstrings(tree, "textwrap"))
    assert "textwrap.TextWrapper" in docs and "textwrap.dedent" in docs
    pairs = {name: data._docstring_pair(name, doc) for name, doc in docs.items()}
    body, summary = pairs["textwrap.dedent"]
    assert summary == "Remove any common leading whitespace from every line in `text`."
    assert "tabs and spaces" in body and summary not in body
    assert pairs["textwrap.shorten"] is not None
    # a one-paragraph docstring has no body to summarize
    assert data._docstring_pair("x", "Only a title line.") is None


def test_first_sentence_and_words():
    assert data._first_sentence("Return x. Then more. And more") == "Return x."
    assert data._first_sentence("no full stop here") == "no full stop here"
    assert words("Use os.path.join(a, b) -- it's FAST!") == ["use", "os.path.join", "a", "b", "it's", "fast"]


def _man(path: Path, name: str, summary: str, desc: str) -> None:
    text = f'.TH X 1\n.SH "NAME"\n{name} \\- {summary}\n.SH "DESCRIPTION"\n\\fB{name}\\fR {desc}\n'
    with gzip.open(path, "wt") as f:
        f.write(text)


def test_real_man_page_parses(need_data):
    page = data.MAN_ROOT / "man1" / "ls.1.gz"
    need_data(page.is_file(), "man pages (coreutils' ls.1.gz)", "make data")
    desc, summary = data._man_page(page)
    assert summary == "list directory contents"
    assert desc.lower().startswith("list information about the files")
    assert "\\f" not in desc and "\\-" not in desc


def test_gcloud_alpha_pages_and_templated_pages_are_kept_once(tmp_path, need_data):
    src = data.MAN_ROOT / "man1"
    real = [src / "gcloud_compute_disks_list.1.gz", src / "gcloud_alpha_compute_disks_list.1.gz",
            src / "gcloud_compute_images_list.1.gz", src / "gcloud_compute_instances_create.1.gz"]
    need_data(all(p.is_file() for p in real), "the gcloud man pages", "make data")
    (tmp_path / "man1").mkdir()
    for p in real:
        shutil.copy(p, tmp_path / "man1" / p.name)
    pairs = data.manpage_pairs(tmp_path)
    keys = [p.key for p in pairs]
    assert "man1/gcloud_alpha_compute_disks_list" not in keys  # its GA page exists
    assert "man1/gcloud_compute_instances_create" in keys
    # "disks list" and "images list" say the same apart from their own names: one is kept
    assert sum(k in keys for k in ("man1/gcloud_compute_disks_list", "man1/gcloud_compute_images_list")) == 1
    assert all(p.group.startswith("gcloud_compute_") for p in pairs)


def test_constructed_man_pages(tmp_path):
    (tmp_path / "man1").mkdir()
    long = "reads every file named on its command line and writes the lines in reverse order to the output"
    _man(tmp_path / "man1" / "tac.1.gz", "tac", "concatenate and print files in reverse", long)
    _man(tmp_path / "man1" / "short.1.gz", "short", "too short a description", "does little")
    (tmp_path / "man1" / "alias.1.gz").write_bytes(gzip.compress(b".so man1/tac.1\n"))
    pairs = data.manpage_pairs(tmp_path)
    assert [(p.key, p.summary) for p in pairs] == [("man1/tac", "concatenate and print files in reverse")]
    assert pairs[0].text.startswith("tac reads every file")


def test_dpkg_pairs_from_real_status_sample(tmp_path, need_data):
    need_data(data.DPKG_STATUS.is_file(), "/var/lib/dpkg/status (a Debian system)")
    blocks = data.DPKG_STATUS.read_text(errors="replace").split("\n\n")[:60]
    sample = tmp_path / "status"
    sample.write_text("\n\n".join(blocks))
    pairs = data.dpkg_pairs(sample)
    assert len(pairs) >= 10
    for p in pairs:
        assert p.source == "dpkg" and p.key.startswith("dpkg/")
        assert "\n" not in p.text and " . " not in f" {p.text} "[:3]
        assert len(words(p.text)) >= 12 and 2 <= len(words(p.summary)) <= 30
    assert len({p.text for p in pairs}) == len(pairs)


def test_dpkg_long_description_and_source_group(tmp_path):
    status = tmp_path / "status"
    status.write_text(
        "Package: libfoo1\nSource: foo (1.2-1)\nDescription: fast foo library\n"
        " Foo turns bar into baz quickly and safely for programs that need it.\n .\n"
        " This package contains the shared library.\n\n"
        "Package: foo-doc\nSource: foo\nDescription: documentation of foo\n"
        " Foo turns bar into baz quickly and safely for programs that need it.\n .\n"
        " This package contains the manual and examples.\n\n"
        "Package: bare\nDescription: no long description\n")
    pairs = data.dpkg_pairs(status)
    assert [p.key for p in pairs] == ["dpkg/libfoo1", "dpkg/foo-doc"]
    assert pairs[0].summary == "fast foo library"
    assert pairs[0].text == ("Foo turns bar into baz quickly and safely for programs that need it. "
                             "This package contains the shared library.")
    assert {p.group for p in pairs} == {"foo"}  # one source package: always one split


def test_split_is_deterministic_and_by_group():
    assert split_of("dpkg", "foo") == split_of("dpkg", "foo")
    splits = [split_of("manpages", f"page{i}") for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert 0.07 < share["test"] < 0.13 and 0.03 < share["valid"] < 0.07
    a = SummaryPair("docstrings", "a.f", "same summary", "x", "y")
    b = SummaryPair("docstrings", "b.g", "same summary", "z", "w")
    assert a.split == b.split


def test_load_all_splits_disjoint_and_counts(need_data):
    status = data.data_status()
    need_data(all(v == "installed" for v in status.values()), f"summarization data ({status})")
    splits, counts = data.load_pairs("all")
    assert set(counts) == set(data.SOURCES) and all(n > 100 for n in counts.values())
    assert sum(len(v) for v in splits.values()) == sum(counts.values())
    keys = {k: {(p.source, p.key) for p in v} for k, v in splits.items()}
    groups = {k: {(p.source, p.group) for p in v} for k, v in splits.items()}
    for x, y in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not keys[x] & keys[y] and not groups[x] & groups[y]
    again, _ = data.load_pairs("all")
    assert [p.key for p in again["test"]] == [p.key for p in splits["test"]]
    assert len(splits["test"]) > 0.06 * sum(counts.values())


def test_unknown_and_missing_data_errors(monkeypatch, tmp_path):
    with pytest.raises(DataMissing, match="--data 'news' is not known; expected one of all, docstrings"):
        data.require_data("news")
    monkeypatch.setattr(data, "DPKG_STATUS", tmp_path / "status")
    with pytest.raises(DataMissing, match=r"dpkg summarization data is missing .*status does not exist.*dpkg"):
        data.require_data("all")
    assert data.data_status()["dpkg"].startswith("missing")
    monkeypatch.setattr(data, "MAN_ROOT", tmp_path)
    with pytest.raises(DataMissing, match="no man pages under .*make data"):
        data.require_data("manpages")
    with pytest.raises(Exception, match="--data 'news' is not known"):
        data.load_pairs("news")
