"""docs/migration.md: every Python example runs as written, each in a fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "migration.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_guide_has_examples():
    assert len(BLOCKS) >= 6  # one per trap and the checkpoint section


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_runs(code):
    exec(compile(code, f"{DOC.name}:block", "exec"), {"__name__": "__migration__"})
