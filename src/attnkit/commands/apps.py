"""``attnkit apps``: the applications, whether their data is installed (or the command that
installs it), and their runs. Also the table of tasks that ``train``, ``eval`` and ``demo`` read."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from ._args import UsageError, shown

__all__ = ["TASKS", "task_module", "check_task"]

# task -> (what it does, the verb that uses a trained run, the package that implements it)
TASKS: dict[str, tuple[str, str, str]] = {
    "translation": ("number words en->fr/de with GRU (no attention, Bahdanau, Luong) and transformer models",
                    "translate", "attnkit.apps.translation"),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UsageError(f"TASK {shown(task)}; expected one of {', '.join(TASKS)}")
    return task


def task_module(task: str):
    """The package of ``task`` (imported on demand: it needs the apps extra)."""
    return importlib.import_module(TASKS[check_task(task)][2])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apps", help="list the applications, their data status and their runs")
    p.add_argument("--runs", default="runs", help="folder holding run folders (default runs)")
    p.set_defaults(func=run)


def _runs(root: Path, task: str) -> list[str]:
    out = []
    if not root.is_dir():
        return out
    for cfg in sorted(root.glob("*/config.json")):
        try:
            config = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if config.get("task") != task:
            continue
        res = cfg.parent / "results.json"
        score = ""
        if res.exists():
            try:
                test = json.loads(res.read_text())["test"]
                score = f"  exact {100 * test['exact']:.1f}%  chrF {test['chrf']:.1f}"
            except (OSError, KeyError, json.JSONDecodeError):
                score = "  (results unreadable)"
        out.append(f"    {cfg.parent}  {config.get('model', {}).get('kind', '?')}{score}")
    return out


def run(args: argparse.Namespace) -> int:
    root = Path(args.runs)
    for task, (summary, verb, module) in TASKS.items():
        print(f"{task}: {summary}")
        print(f"  use a run:  attnkit {verb} RUN ...;  train: attnkit train {task} --quick")
        try:
            status = importlib.import_module(module + ".data").data_status()
        except ModuleNotFoundError as exc:
            status = {"(all)": f"missing package {exc.name!r}: run 'make install'"}
        for name, state in status.items():
            print(f"  data {name}: {state}")
        runs = _runs(root, task)
        print(f"  runs in {root}/: {len(runs)}")
        for line in runs:
            print(line)
    return 0
