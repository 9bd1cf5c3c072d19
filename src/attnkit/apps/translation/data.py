"""Parallel text for translation.

Number words: English number words -> French or German number words, generated with the
``num2words`` package for integers 0..999,999. Which integers are held out is fixed by the integer
itself (a hash), so the train, validation and test sets never share a number whatever their sizes.
Sets are drawn with equal numbers of 1- to 6-digit integers, so short and long inputs are both
represented, and cached under ``$ATTNKIT_CACHE/translation/``.

Number lists: 1 to ``MAX_ITEMS`` numbers of one split joined with ``"; "`` on both sides, for
inputs long enough (up to about 60 words) that a fixed-size summary of the source runs short.

Bible verses: English (World English Bible) -> Spanish (Reina-Valera 1909), both public domain,
from the Debian packages ``sword-text-web`` and ``sword-text-sparv``, dumped with ``mod2imp``
(``libsword-utils``) and joined on the verse reference: about 31,000 pairs. Whole books are held
out (:data:`BIBLE_HELD_OUT`), so no test verse is a near-duplicate of a training verse; books with
parallel passages elsewhere (the synoptic gospels, Kings and Chronicles) stay in training.

Each pair also carries its *components* (character spans of the thousands' hundreds, the rest of
the thousands group with the word "thousand", the hundreds, and the rest), the same five-or-fewer
labels on both sides: the word alignment known by construction, which the alignment error rate
scores attention against.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass

from ...errors import AttnKitError
from ..trainer import cache_dir

__all__ = ["Pair", "DataMissing", "DATASETS", "BIBLE_MODULES", "BIBLE_HELD_OUT", "bible_split", "bible_verses",
           "bible_pairs", "require_bible", "NUMBER_LANGS", "MAX_ITEMS", "SEPARATOR", "number_split",
           "number_pairs", "number_list_pairs", "components", "require_num2words", "installed", "length_bucket",
           "NUMBER_BUCKETS", "BUCKETS", "data_status"]

NUMBER_LANGS = ("fr", "de")
DATASETS = ("numbers", "number-lists", "bible")
MAX_ITEMS = 5  # numbers in one number-list pair, at most
SEPARATOR = "; "
MAX_NUMBER = 999_999
_SPLIT_OF_SLOT = {0: "test", 1: "valid"}  # hash slot (mod 20) -> split; every other slot trains


class DataMissing(AttnKitError):
    """A data set or the package that generates it is not installed; the message names the command."""


@dataclass(frozen=True)
class Pair:
    """One translation pair; ``spans`` maps component labels to ``((src start, end), (tgt start, end))``
    character spans (empty when the alignment is not known)."""

    src: str
    tgt: str
    key: str
    spans: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = ()

    @property
    def src_words(self) -> int:
        return len(self.src.replace("-", " ").replace(",", " ").split())


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def require_num2words() -> None:
    """A :class:`DataMissing` naming the install command when ``num2words`` is missing."""
    if not installed("num2words"):
        raise DataMissing("the number-words data needs the package 'num2words', which is not installed; "
                          "expected it installed: run 'make data' (or pip install 'attnkit[apps]')")


def require_data(data: str) -> None:
    """A :class:`DataMissing` naming the install command when ``data`` cannot be loaded here."""
    if data not in DATASETS:
        raise DataMissing(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    if data == "bible":
        require_bible()
    else:
        require_num2words()
    from .metrics import require_sacrebleu

    require_sacrebleu()


BIBLE_MODULES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}  # sword module per language
BIBLE_PACKAGES = "sword-text-web sword-text-sparv libsword-utils"
# held-out books: narrative, letters and prophecy, none with a parallel account in another book
BIBLE_HELD_OUT = {"test": ("Ruth", "Jonah", "Acts", "James"), "valid": ("Joel", "Philippians", "Titus", "Nahum")}
_VERSE = re.compile(r"^(?P<book>.+) (?P<chapter>\d+):(?P<verse>[1-9]\d*)$")


def require_bible() -> None:
    """A :class:`DataMissing` naming the install command when the Bible modules or mod2imp are missing."""
    import shutil

    if shutil.which("mod2imp") is None:
        raise DataMissing(f"the bible data needs 'mod2imp' (Debian libsword-utils), which is not installed; "
                          f"expected it installed: run 'make data' (apt-get install {BIBLE_PACKAGES})")


def bible_split(key: str) -> str:
    """``"train"``, ``"valid"`` or ``"test"`` for a verse reference such as ``"Jonah 1:2"`` (by its book)."""
    m = _VERSE.match(key)
    if m is None:
        raise AttnKitError(f"verse reference {key!r} is not of the form 'Book C:V'")
    book = m["book"]
    return next((split for split, books in BIBLE_HELD_OUT.items() if book in books), "train")


def _sword_verses(module: str) -> dict[str, str]:
    """Every verse of a sword module as plain text, by reference (notes and titles dropped)."""
    import html
    import subprocess

    proc = subprocess.run(["mod2imp", module], capture_output=True, text=True)
    if proc.returncode != 0 or "$$$" not in proc.stdout:
        raise DataMissing(f"mod2imp could not read the sword module {module!r} ({proc.stderr.strip()[:200]}); "
                          f"expected it installed: run 'make data' (apt-get install {BIBLE_PACKAGES})")
    out: dict[str, str] = {}
    key = None
    for line in proc.stdout.split("\n"):
        if line.startswith("$$$"):
            key = line[3:].strip()
            key = key if _VERSE.match(key) else None  # headings and chapter introductions
            continue
        if key is None:
            continue
        text = re.sub(r"<note\b.*?</note>", " ", line, flags=re.S)
        text = re.sub(r"<title\b.*?</title>", "", text, flags=re.S)
        text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text))).strip()
        text = re.sub(r"\s+([,.;:!?\u2019\u201d)])", r"\1", text)
        if text:
            out[key] = f"{out[key]} {text}" if key in out else text
    return out


def bible_verses() -> list[Pair]:
    """Every English-Spanish verse pair in canonical order, cached as TSV under ``$ATTNKIT_CACHE/translation``."""
    path = cache_dir("translation") / "bible-en-es.tsv"
    if path.exists():
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
        return [Pair(src, tgt, key) for key, src, tgt in rows]
    require_bible()
    en, es = (_sword_verses(BIBLE_MODULES[lang]) for lang in ("en", "es"))
    pairs = [Pair(" ".join(en[k].split()), " ".join(es[k].split()), k) for k in en if k in es]
    if not pairs:
        raise DataMissing("the English and Spanish Bible modules share no verse; expected sword-text-web and "
                          f"sword-text-sparv: run 'make data' (apt-get install {BIBLE_PACKAGES})")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{p.key}\t{p.src}\t{p.tgt}\n" for p in pairs), encoding="utf-8")
    tmp.replace(path)
    return pairs


def bible_pairs(split: str, count: int | None = None, *, max_words: int | None = None, seed: int = 0) -> list[Pair]:
    """The verse pairs of ``split`` whose English side has at most ``max_words`` words; ``count`` of them
    (a seeded sample, in canonical order) or all."""
    if split not in ("train", "valid", "test"):
        raise AttnKitError(f"split {split!r} is not known; expected train, valid or test")
    pairs = [p for p in bible_verses() if bible_split(p.key) == split
             and (max_words is None or len(p.src.split()) <= max_words)]
    if count is not None and count < len(pairs):
        import random

        keep = set(random.Random(f"bible-{split}-{seed}").sample(range(len(pairs)), count))
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    return pairs


def number_split(n: int) -> str:
    """``"train"``, ``"valid"`` (5%) or ``"test"`` (5%) for the integer ``n``, fixed by a hash of ``n``."""
    slot = int.from_bytes(hashlib.blake2b(str(n).encode(), digest_size=4).digest(), "little") % 20
    return _SPLIT_OF_SLOT.get(slot, "train")


_THOUSAND = re.compile(r"thousand|mille|tausend")
_HUNDRED = re.compile(r"hundred|cents?|hundert")


def _group_pieces(text: str, start: int, end: int, group: str) -> list[tuple[str, tuple[int, int]]]:
    """Split ``text[start:end]`` after its hundreds word: ``(group+'h', span)``, ``(group+'r', span)``."""
    out = []
    m = _HUNDRED.search(text, start, end)
    cut = start
    if m is not None:
        out.append((group + "h", (start, m.end())))
        cut = m.end()
    if text[cut:end].strip(" ,-"):
        out.append((group + "r", (cut, end)))
    return out


def components(text: str) -> list[tuple[str, tuple[int, int]]]:
    """Labelled character spans of number words in English, French or German: ``kh`` (hundreds of
    the thousands), ``kr`` (the rest of the thousands, with the word for thousand), ``uh``
    (hundreds), ``ur`` (the rest).

    >>> components("trois cent vingt")
    [('uh', (0, 10)), ('ur', (10, 16))]
    """
    m = _THOUSAND.search(text)
    if m is None:
        return _group_pieces(text, 0, len(text), "u")
    head = _group_pieces(text, 0, m.start(), "k")
    if head and head[-1][0] == "kr":
        head[-1] = ("kr", (head[-1][1][0], m.end()))
    else:  # no rest before the word for thousand: it starts where the hundreds end
        head.append(("kr", (head[-1][1][1] if head else m.start(), m.end())))
    return head + _group_pieces(text, m.end(), len(text), "u")


def _digits_sample(split: str, count: int, seed: int) -> list[int]:
    """``count`` distinct integers of ``split``, as evenly spread over 1..6 digits as the digit
    counts allow (short ones have few numbers; the rest go to longer ones), in a seeded order."""
    import random

    rng = random.Random(f"{split}-{seed}")
    chosen: list[int] = []
    for digits in range(1, 7):
        quota = -(-(count - len(chosen)) // (7 - digits))
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
        if hi - lo < 20_000:
            pool = [n for n in range(lo, hi + 1) if number_split(n) == split]
            rng.shuffle(pool)
            chosen.extend(pool[:quota])
            continue
        seen: set[int] = set()
        while len(seen) < quota:
            n = rng.randint(lo, hi)
            if number_split(n) == split:
                seen.add(n)
        chosen.extend(sorted(seen))
    rng.shuffle(chosen)
    return chosen[:count]


def _with_spans(key: str, src: str, tgt: str) -> Pair:
    cs, ct = dict(components(src)), dict(components(tgt))
    spans = tuple((label, cs[label], ct[label]) for label in cs) if cs.keys() == ct.keys() else ()
    return Pair(src, tgt, key, spans)


def _number_pair(n: int, lang: str) -> Pair:
    from num2words import num2words

    return _with_spans(str(n), num2words(n, lang="en"), num2words(n, lang=lang))


def number_pairs(lang: str, split: str, count: int, *, seed: int = 0) -> list[Pair]:
    """``count`` number-word pairs English -> ``lang`` of ``split`` (``train``/``valid``/``test``),
    cached as TSV under ``$ATTNKIT_CACHE/translation``."""
    if lang not in NUMBER_LANGS:
        raise AttnKitError(f"number-words language {lang!r} is not available; "
                           f"expected one of {', '.join(NUMBER_LANGS)}")
    if split not in ("train", "valid", "test"):
        raise AttnKitError(f"split {split!r} is not known; expected train, valid or test")
    if count < 1:
        raise AttnKitError(f"count must be >= 1; got {count}")
    require_num2words()
    path = cache_dir("translation") / f"numbers-en-{lang}-{split}-{count}-s{seed}.tsv"
    if path.exists():
        rows = [line.split("\t") for line in path.read_text().splitlines() if line]
        return [_with_spans(n, src, tgt) for n, src, tgt in rows]
    pairs = [_number_pair(n, lang) for n in _digits_sample(split, count, seed)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{p.key}\t{p.src}\t{p.tgt}\n" for p in pairs))
    tmp.replace(path)
    return pairs


NUMBER_BUCKETS = (4, 6, 8, 10)  # source-length bucket edges (words; hyphenated parts counted apart)
BUCKETS = {"numbers": NUMBER_BUCKETS, "number-lists": (10, 20, 30, 40), "bible": (10, 20, 30, 40)}  # per data set


def _joined(key: str, srcs: list[str], tgts: list[str]) -> Pair:
    """Pairs of single numbers joined into one list pair; component labels get the item index."""
    src, tgt, spans = SEPARATOR.join(srcs), SEPARATOR.join(tgts), []
    offset_s = offset_t = 0
    for i, (a, b) in enumerate(zip(srcs, tgts)):
        cs, ct = dict(components(a)), dict(components(b))
        if cs.keys() == ct.keys():
            spans += [(f"{i}.{label}", (offset_s + cs[label][0], offset_s + cs[label][1]),
                       (offset_t + ct[label][0], offset_t + ct[label][1])) for label in cs]
        offset_s += len(a) + len(SEPARATOR)
        offset_t += len(b) + len(SEPARATOR)
    return Pair(src, tgt, key, tuple(spans))


def number_list_pairs(lang: str, split: str, count: int, *, seed: int = 0) -> list[Pair]:
    """``count`` pairs of 1..``MAX_ITEMS`` numbers of ``split`` each (English -> ``lang``), the
    numbers drawn as in :func:`number_pairs`; cached like it."""
    import random

    if count < 1:
        raise AttnKitError(f"count must be >= 1; got {count}")
    singles = number_pairs(lang, split, max(count * 2, 50), seed=seed)
    path = cache_dir("translation") / f"numberlists-en-{lang}-{split}-{count}-s{seed}.tsv"
    by_key = {p.key: p for p in singles}
    if path.exists():
        keys = [line.split(",") for line in path.read_text().split()]
    else:
        rng = random.Random(f"lists-{split}-{seed}")
        keys = [[rng.choice(singles).key for _ in range(rng.randint(1, MAX_ITEMS))] for _ in range(count)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(",".join(k) + "\n" for k in keys))
        tmp.replace(path)
    return [_joined(",".join(k), [by_key[n].src for n in k], [by_key[n].tgt for n in k]) for k in keys]


def length_bucket(words: int, edges: tuple[int, ...] = NUMBER_BUCKETS) -> str:
    """The bucket label of a source length in words: ``"1-4"``, ``"5-6"``, ..., ``"11+"``."""
    lo = 1
    for e in edges:
        if words <= e:
            return f"{lo}-{e}"
        lo = e + 1
    return f"{lo}+"


def data_status() -> dict[str, str]:
    """Per data set: ``"installed"`` or the command that installs it."""
    ok = installed("num2words")
    state = "installed" if ok else "missing: run 'make data' (pip install 'attnkit[apps]')"
    import shutil

    bible = ("installed" if shutil.which("mod2imp") else
             f"missing: run 'make data' (apt-get install {BIBLE_PACKAGES})")
    return {"numbers": state, "number-lists": state, "bible": bible}
