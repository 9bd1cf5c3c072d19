"""Benchmark harness: time implementations against each other in one run, print ratio tables,
write JSON. Used by the scripts in ``benchmarks/`` and by ``attnkit bench``.

Rules it follows: warm-up runs, the median of repeats, ``torch.set_num_threads`` honoured (the
thread count is recorded), peak memory measured in a fresh subprocess, and every ratio taken
against a baseline measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Timing", "time_fn", "matmul_flops_per_s", "attention_flops", "peak_memory", "Results", "environment"]


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and min over ``repeats`` timed runs."""

    median: float
    min: float
    runs: tuple[float, ...]


def time_fn(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, max_seconds: float = 20.0) -> Timing:
    """Time ``fn()`` after ``warmup`` calls; stops early once ``max_seconds`` are spent (>= 1 run)."""
    for _ in range(warmup):
        fn()
    runs: list[float] = []
    start = time.perf_counter()
    while len(runs) < repeats:
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return Timing(statistics.median(runs), min(runs), tuple(runs))


def matmul_flops_per_s(dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """Measured ``torch.mm`` throughput (FLOP/s) for ``n x n`` matrices: the ceiling on this CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = time_fn(lambda: torch.mm(a, b), warmup=2, repeats=5)
    return 2 * n**3 / t.median


def attention_flops(batch: int, heads: int, lq: int, lk: int, head_dim: int, v_dim: int | None = None, *,
                    density: float = 1.0, backward: bool = False) -> float:
    """Matmul FLOPs of attention on the kept fraction ``density`` of the score matrix: forward
    ``2 T S D + 2 T S Dv`` per head; forward+backward adds 2.5x that (FlashAttention-2 count)."""
    v_dim = head_dim if v_dim is None else v_dim
    fwd = 2.0 * batch * heads * lq * lk * (head_dim + v_dim) * density
    return fwd * 3.5 if backward else fwd


_MEMORY_PROBE = r"""
import importlib, json, os, resource, sys
spec = json.loads(sys.argv[1])
mod, fn = spec["target"].split(":")
setup = getattr(importlib.import_module(mod), fn)
run = setup(**spec["kwargs"])          # builds inputs, returns the callable to measure

def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0

if os.path.exists("/proc/self/clear_refs"):
    # Linux: reset this process's high-water mark (VmHWM) to its current size, so that neither
    # import-time peaks nor the parent's ru_maxrss (inherited across exec) hide the run's peak
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = status("VmRSS:")
    run()
    peak = status("VmHWM:")
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if sys.platform == "darwin":
        base, peak = base / 1024.0, peak / 1024.0   # bytes there, KiB on Linux
print(json.dumps({"peak_extra_mib": peak - base, "peak_total_mib": peak}))
"""


def peak_memory(target: str, kwargs: dict[str, Any], *, timeout: float = 600.0,
                extra_path: Sequence[str | Path] = ()) -> dict[str, float] | None:
    """Peak resident memory of one run in a fresh Python process.

    ``target`` is ``"module:function"``; the function takes ``kwargs``, builds its inputs (and may
    warm up: compile, first-call allocations) and returns a zero-argument callable; the extra
    memory that callable needs beyond what the process holds when it starts is reported in MiB
    (``peak_extra_mib``), read from a reset high-water mark on Linux. ``extra_path`` entries are put on the child's
    ``PYTHONPATH`` (e.g. the ``benchmarks/`` folder). Returns None, with a warning carrying the
    child's last error line, if the process fails (e.g. out of memory).
    """
    paths = [str(p) for p in extra_path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=os.pathsep.join(paths))
    try:
        proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps({"target": target, "kwargs": kwargs})],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        warnings.warn(f"peak_memory({target}) failed with exit code {proc.returncode}: {tail}", stacklevel=2)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


@dataclass
class Results:
    """Measurements of one run: rows of ``case`` x ``impl`` with seconds and extra fields."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, case: dict[str, Any], impl: str, seconds: float | None, **extra: Any) -> None:
        """Record one measurement (``seconds=None``: could not run, e.g. out of memory)."""
        self.rows.append({**case, "impl": impl, "seconds": seconds, **extra})

    def table(self, case_keys: Sequence[str], baseline: str, *, value: str = "seconds") -> str:
        """A Markdown table: one row per case, per impl its time in ms and ratio to ``baseline``."""
        impls = list(dict.fromkeys(r["impl"] for r in self.rows))
        cases: dict[tuple, dict[str, dict]] = {}
        for r in self.rows:
            cases.setdefault(tuple(r[k] for k in case_keys), {})[r["impl"]] = r
        head = [*case_keys, *[f"{i} ms" for i in impls], *[f"{i}/{baseline}" for i in impls if i != baseline]]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, by_impl in cases.items():
            vals = [by_impl.get(i, {}).get(value) for i in impls]
            base = by_impl.get(baseline, {}).get(value)
            cells = [str(k) for k in key] + ["-" if v is None else f"{v * 1e3:.2f}" for v in vals]
            cells += ["-" if (v is None or not base) else f"{v / base:.2f}x"
                      for i, v in zip(impls, vals) if i != baseline]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write rows and metadata (environment included) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"name": self.name, "environment": environment(), "meta": self.meta, "rows": self.rows}
        path.write_text(json.dumps(payload, indent=2, default=str))
        return path
