"""The Triton kernels' tests on CPU: tests/kernels/test_triton_block_sparse.py and
test_triton_lsh.py run in a process started with ``TRITON_INTERPRET=1``, because Triton decides
between compiled and interpreted kernels when its library is imported (in this process, pytest
has imported it already, compiled). On a GPU machine those files run directly instead."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import require_data

ROOT = Path(__file__).resolve().parents[2]
FILES = ["tests/kernels/test_triton_block_sparse.py", "tests/kernels/test_triton_lsh.py"]


def test_triton_kernels_in_the_interpreter():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the Triton tests run on it directly")
    if importlib.util.find_spec("triton") is None:
        require_data(False, "the triton package", "make install")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfE", *FILES]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
