"""Text -> one-line summary pairs written by people, from three sources installed on this machine.

* ``docstrings``: Python standard library docstrings (read with :mod:`ast`, nothing imported):
  the body after the first paragraph -> the first sentence of that first paragraph.
* ``manpages``: man pages in ``/usr/share/man/man{1,5,8}``: the DESCRIPTION section -> the NAME
  one-liner (the text after ``\\-``). Most pages on this image are gcloud's; its alpha and beta
  pages are dropped when the GA page exists, and templated pages whose summary and first sentence
  differ only in the words of their own command name (``gcloud compute disks list`` / ``... images
  list``) are kept once.
* ``dpkg``: ``/var/lib/dpkg/status``: the long Description of each installed package -> its
  synopsis (the Description's first line); identical long descriptions are kept once.

Splits are fixed by a hash of each pair's *group* (the summary text for docstrings, the gcloud
command group or page name for man pages, the source package for dpkg), so near-duplicates and
sibling pages always fall on the same side: 10% test, 5% validation, the rest training. Parsed
pairs are cached under ``$ATTNKIT_CACHE/summarization/``.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import AttnKitError
from ..trainer import cache_dir
from ..translation.data import DataMissing

__all__ = ["SummaryPair", "DataMissing", "SOURCES", "DATASETS", "MAN_ROOT", "DPKG_STATUS", "split_of",
           "docstring_pairs", "manpage_pairs", "dpkg_pairs", "source_pairs", "load_pairs", "data_status",
           "require_data", "words"]

SOURCES = ("docstrings", "manpages", "dpkg")
DATASETS = ("all", *SOURCES)
MAN_ROOT = Path("/usr/share/man")
MAN_SECTIONS = ("man1", "man5", "man8")
DPKG_STATUS = Path("/var/lib/dpkg/status")
_CACHE_VERSION = 3
_INSTALL = {
    "docstrings": "the Python standard library sources (Debian: apt-get install libpython3-stdlib; "
                  "they ship with any CPython built from source)",
    "manpages": "man pages: run 'make data' (apt-get install man-db, with path-exclude of /usr/share/man "
                "removed from /etc/dpkg/dpkg.cfg.d/)",
    "dpkg": "a Debian system: /var/lib/dpkg/status is written by dpkg (apt-get install dpkg)",
}


@dataclass(frozen=True)
class SummaryPair:
    """One pair: ``text`` (the long form) -> ``summary``; ``key`` names it, ``group`` fixes its split."""

    source: str  # one of SOURCES
    key: str  # e.g. "json.decoder.JSONDecoder.decode", "man1/ls", "dpkg/coreutils"
    group: str  # pairs of one group always share a split
    text: str
    summary: str

    @property
    def split(self) -> str:
        return split_of(self.source, self.group)


def split_of(source: str, group: str) -> str:
    """``"test"`` (10%), ``"valid"`` (5%) or ``"train"`` for a group, by a hash of its name."""
    slot = int(hashlib.sha1(f"{source}/{group}".encode()).hexdigest()[:8], 16) % 100
    return "test" if slot < 10 else "valid" if slot < 15 else "train"


def words(text: str) -> list[str]:
    """Lower-case word tokens: runs of letters and digits, joined by inner ``- _ . ' /``."""
    return re.findall(r"[a-z0-9]+(?:[-_.'/][a-z0-9]+)*", text.lower())


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()


# ----------------------------------------------------------------------------------------------
# Python standard library docstrings
# ----------------------------------------------------------------------------------------------


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def _docstrings(tree: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(tree, clean=True) if isinstance(
        tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if doc:
        yield prefix, doc
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(node, f"{prefix}.{node.name}")


def _docstring_pair(name: str, doc: str) -> tuple[str, str] | None:
    paragraphs = re.split(r"\n\s*\n", doc.strip())
    if len(paragraphs) < 2:
        return None
    summary = _first_sentence(_squash(paragraphs[0]))
    body_lines = [ln for ln in "\n\n".join(paragraphs[1:]).splitlines()
                  if not ln.lstrip().startswith((">>>", "..."))]
    body = _squash(" ".join(body_lines))
    if not 3 <= len(words(summary)) <= 30 or len(words(body)) < 12:
        return None
    return body, summary


def docstring_pairs() -> list[SummaryPair]:
    """Body -> first sentence of standard library docstrings (tests and site-packages skipped)."""
    root = stdlib_dir()
    out, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(rel))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for name, doc in _docstrings(tree, module):
            pair = _docstring_pair(name, doc)
            if pair is None:
                continue
            body, summary = pair
            group = " ".join(words(summary))
            if (group, body[:200]) in seen:
                continue
            seen.add((group, body[:200]))
            out.append(SummaryPair("docstrings", name, group, body, summary))
    return out


# ----------------------------------------------------------------------------------------------
# man pages
# ----------------------------------------------------------------------------------------------

_ESCAPES = {"em": "-", "en": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "bu": "*", "co": "(c)"}


def _troff_text(s: str) -> str:
    s = re.sub(r"\\f(?:\[[^\]]*\]|\(..|.)", "", s)
    s = re.sub(r"\\\((..)", lambda m: _ESCAPES.get(m.group(1), ""), s)
    s = re.sub(r"\\\[(\w+)\]", lambda m: _ESCAPES.get(m.group(1), ""), s)
    s = s.replace("\\-", "-").replace("\\ ", " ").replace("\\&", "").replace("\\e", "\\").replace("\\'", "'")
    s = s.replace("\\~", " ").replace("\\|", "").replace("\\^", "").replace("\\c", "")
    s = re.sub(r"\\[*nsk]\(?\[?[^\s\]]*\]?", "", s)
    return s


def _man_sections(txt: str) -> dict[str, list[str]]:
    secs: dict[str, list[str]] = {}
    cur = None
    for line in txt.split("\n"):
        m = re.match(r'^\.S[Hh]\s+"?([^"]*)"?', line)
        if m:
            cur = m.group(1).strip().upper()
            secs[cur] = []
            continue
        if cur is None or line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            m = re.match(r"^\.(?:B|I|BI|BR|IR|RB|RI|IB|SM|SB)\s+(.*)", line)
            if m:
                secs[cur].append(m.group(1).replace('"', ""))
            continue
        secs[cur].append(line)
    return secs


def _man_page(path: Path) -> tuple[str, str] | None:
    try:
        txt = gzip.open(path).read().decode("utf-8", "replace")
    except (OSError, EOFError):
        return None
    if txt.startswith(".so "):
        return None
    secs = _man_sections(txt)
    name = _squash(_troff_text(" ".join(secs.get("NAME", []))))
    desc = _squash(_troff_text(" ".join(secs.get("DESCRIPTION", []))))
    if " - " not in name or len(desc.split()) < 12:
        return None
    summary = name.split(" - ", 1)[1].strip()
    if not 2 <= len(words(summary)) <= 30:
        return None
    return " ".join(desc.split()[:400]), summary


def _shape(text: str, own: set[str], n: int) -> str:
    """The first ``n`` words of ``text`` with the words of the page's own name blanked: pages whose
    summary and first sentence match this way are templated copies of one another."""
    return " ".join("_" if w in own else w for w in words(text)[:n])


def manpage_pairs(root: Path = MAN_ROOT) -> list[SummaryPair]:
    """DESCRIPTION -> NAME one-liner of the man pages under ``root`` (near-duplicates kept once)."""
    files = []
    for sec in MAN_SECTIONS:
        d = root / sec
        if d.is_dir():
            files.extend(sorted(p for p in d.iterdir() if p.name.endswith(".gz")))
    stems = {p.name.split(".")[0] for p in files}
    out, seen = [], set()
    for path in files:
        stem = path.name.split(".")[0]
        parts = stem.split("_")
        if parts[0] == "gcloud" and len(parts) > 1 and parts[1] in ("alpha", "beta"):
            if "_".join([parts[0], *parts[2:]]) in stems:
                continue  # the GA page says the same
            parts = [parts[0], *parts[2:]]
        page = _man_page(path)
        if page is None:
            continue
        desc, summary = page
        own = {w for part in parts for w in words(part.replace("-", " "))}
        shape = (_shape(summary, own, 30), _shape(_first_sentence(desc), own, 30))
        if shape in seen:
            continue
        seen.add(shape)
        group = "_".join(parts[:3]) if parts[0] == "gcloud" else stem
        out.append(SummaryPair("manpages", f"{path.parent.name}/{stem}", group, desc, summary))
    return out


# ----------------------------------------------------------------------------------------------
# Debian package descriptions
# ----------------------------------------------------------------------------------------------


def dpkg_pairs(status: Path = DPKG_STATUS) -> list[SummaryPair]:
    """Long description -> synopsis of the packages in dpkg's status file (one per text)."""
    out, seen = [], set()
    for block in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        last = None
        for line in block.split("\n"):
            if line.startswith((" ", "\t")) and last is not None:
                fields[last] += "\n" + line
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        desc = fields.get("Description")
        if not desc or "\n" not in desc:
            continue
        synopsis, _, long = desc.partition("\n")
        lines = [ln.strip() for ln in long.split("\n")]
        text = _squash(" ".join("" if ln == "." else ln for ln in lines))
        if len(words(text)) < 12 or not 2 <= len(words(synopsis)) <= 30 or text in seen:
            continue
        seen.add(text)
        package = fields.get("Package", "?")
        source = fields.get("Source", package).split()[0]
        out.append(SummaryPair("dpkg", f"dpkg/{package}", source, text, synopsis.strip()))
    return out


# ----------------------------------------------------------------------------------------------
# loading with a cache
# ----------------------------------------------------------------------------------------------


def _fingerprint(source: str) -> str:
    """Changes when the source's files change (so the cache is rebuilt)."""
    if source == "docstrings":
        root = stdlib_dir()
        return f"{sys.version_info[:3]}-{root}-{root.stat().st_mtime_ns}"
    if source == "manpages":
        return "-".join(f"{sec}:{len(os.listdir(MAN_ROOT / sec))}:{(MAN_ROOT / sec).stat().st_mtime_ns}"
                        for sec in MAN_SECTIONS if (MAN_ROOT / sec).is_dir())
    st = DPKG_STATUS.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


_LOADERS = {"docstrings": docstring_pairs, "manpages": manpage_pairs, "dpkg": dpkg_pairs}


def source_pairs(source: str) -> list[SummaryPair]:
    """Every pair of one source (parsed once, then read from the cache)."""
    require_data(source)
    digest = hashlib.sha1(f"{_CACHE_VERSION}-{_fingerprint(source)}".encode()).hexdigest()[:12]
    path = cache_dir("summarization") / f"{source}-{digest}.json"
    if path.exists():
        try:
            return [SummaryPair(**row) for row in json.loads(path.read_text())]
        except (json.JSONDecodeError, TypeError):
            pass
    pairs = _LOADERS[source]()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(p) for p in pairs]))
    tmp.replace(path)
    return pairs


def load_pairs(data: str = "all") -> tuple[dict[str, list[SummaryPair]], dict[str, int]]:
    """Train / valid / test pairs of ``data`` (a source or ``"all"``) and how many pairs each source gave."""
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    sources = SOURCES if data == "all" else (data,)
    splits: dict[str, list[SummaryPair]] = {"train": [], "valid": [], "test": []}
    counts = {}
    for source in sources:
        pairs = source_pairs(source)
        counts[source] = len(pairs)
        for p in pairs:
            splits[p.split].append(p)
    for rows in splits.values():
        rows.sort(key=lambda p: (p.source, p.key))
    return splits, counts


def _missing(source: str) -> str | None:
    if source == "docstrings":
        root = stdlib_dir()
        return None if (root / "json" / "decoder.py").is_file() else f"no Python sources under {root}"
    if source == "manpages":
        if not any((MAN_ROOT / sec).is_dir() and any(p.name.endswith(".gz") for p in (MAN_ROOT / sec).iterdir())
                   for sec in MAN_SECTIONS):
            return f"no man pages under {MAN_ROOT}/man1, man5 or man8"
        return None
    return None if DPKG_STATUS.is_file() else f"{DPKG_STATUS} does not exist"


def data_status() -> dict[str, str]:
    """``{source: "installed" or what installs it}`` for each source."""
    out = {}
    for source in SOURCES:
        why = _missing(source)
        out[source] = "installed" if why is None else f"missing ({why}): install {_INSTALL[source]}"
    return out


def require_data(data: str) -> None:
    """A :class:`DataMissing` naming what installs ``data`` (a source or ``"all"``) when it is missing."""
    if data not in DATASETS:
        raise DataMissing(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    for source in SOURCES if data == "all" else (data,):
        why = _missing(source)
        if why is not None:
            raise DataMissing(f"the {source} summarization data is missing ({why}); expected it installed: "
                              f"{_INSTALL[source]}")
    from .metrics import require_rouge

    require_rouge()
