"""The context-parallel example under ``torchrun`` (its real launcher): two ranks on loopback, the
loss of every step equal to one process's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "long_context_distributed.py"


def test_example_under_torchrun():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE),
           "--seq", "256", "--steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"\s*\d+\s", line)]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    worst = float(re.search(r"largest loss difference over 3 steps: (\S+)", done.stdout).group(1))
    assert worst < 1e-3 and float(rows[-1][1]) < float(rows[0][1])
