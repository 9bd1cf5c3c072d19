"""``attnkit apps``: the applications, whether their data is installed (or the command that
installs it), and their runs. Also the table of tasks that ``train``, ``eval`` and ``demo`` read.

Each task package (``attnkit.apps.<task>``) provides::

    train(*, data, model, quick, budget_minutes, max_steps, eval_every, out, seed, progress, resume, **options)
    load_run(path)                   # refuses a missing or foreign run folder with a clear error
    evaluate_run(path, **options)    # writes results.json and prints the tables
    data.data_status()               # {data set: "installed" or the command that installs it}
    data.require_data(data)          # raises DataMissing naming the install command

(``data`` is the task package's ``data`` module unless its entry names another ``data_module``, for
tasks that share one, like the vision tasks.)

and its entry in :data:`TASKS` names its models, data sets and the extra options its ``train`` and
``evaluate_run`` accept (argparse destinations of the ``train`` and ``eval`` commands).
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from ._args import UsageError, shown

__all__ = ["Task", "TASKS", "DEMOS", "task_module", "task_data", "check_task", "check_choice"]


@dataclass(frozen=True)
class Task:
    """One application as the command line sees it."""

    summary: str  # one line: what it does
    verb: str  # the command that uses a trained run ('translate', 'classify', ...)
    module: str  # the package that implements it
    models: tuple[str, ...]  # --model choices; the first is the default
    datasets: tuple[str, ...]  # --data choices; the first is the default
    train_options: tuple[str, ...] = ()  # extra argparse destinations passed to train()
    eval_options: tuple[str, ...] = ()  # extra argparse destinations passed to evaluate_run()
    data_module: str | None = None  # the module with data_status() / require_data() (default: <module>.data)

    @property
    def data(self) -> str:
        return self.data_module or self.module + ".data"


TASKS: dict[str, Task] = {
    "translation": Task("Bible verses en->es and number words en->fr/de with GRU (no attention, Bahdanau, Luong) "
                        "and transformer models",
                        "translate", "attnkit.apps.translation",
                        models=("transformer", "rnn", "rnn-bahdanau", "rnn-luong", "transformer-sparse",
                                "transformer-lsh"),
                        datasets=("numbers", "number-lists", "bible"),
                        train_options=("lang",), eval_options=("beam", "length_penalty", "encoder")),
    "vit": Task("Fashion-MNIST classification: a ViT (global or neighbourhood attention) against a CNN without "
                "attention", "classify-image", "attnkit.apps.vision.classify",
                models=("vit", "vit-neighborhood", "vit-convstem", "cnn"), datasets=("fashion-mnist",),
                data_module="attnkit.apps.vision.data"),
    "caption": Task("captions of Fashion-MNIST scenes (items and their relations): a patch encoder and a transformer "
                    "decoder with cross-attention against the same decoder reading a mean-pooled image vector",
                    "caption", "attnkit.apps.vision.caption", models=("attention", "pooled"), datasets=("scenes",),
                    eval_options=("beam", "length_penalty"), data_module="attnkit.apps.vision.data"),
    "detect": Task("detection on Fashion-MNIST scenes: DETR (transformer, object queries, Hungarian matching) against "
                   "a YOLO-v1-style grid CNN without attention", "detect", "attnkit.apps.vision.detect",
                   models=("detr", "grid"), datasets=("scenes",), data_module="attnkit.apps.vision.data"),
    "sentiment": Task("Pang & Lee movie-review polarity (sentences, full reviews): frozen or fine-tuned MiniLM with "
                      "mean or attention pooling, GRUs with and without attention, hierarchical attention",
                      "classify", "attnkit.apps.sentiment",
                      models=("minilm-attn", "minilm-lr", "minilm-mean", "minilm-ft", "gru", "gru-attn", "sent-mean-lr",
                              "han", "han-lex", "tfidf-lr", "nbsvm", "minilm-ft-lex"),
                      datasets=("sentences", "reviews"), train_options=("fold", "tune_layers", "encoder")),
    "summarization": Task("one-line summaries of docstrings, man pages and Debian package descriptions: a "
                          "pointer-generator transformer against the same transformer without copying, a GRU without "
                          "attention and the lead baseline", "summarize", "attnkit.apps.summarization",
                          models=("pointer", "transformer", "rnn"), datasets=("all", "docstrings", "manpages", "dpkg"),
                          eval_options=("beam", "length_penalty")),
}

# `attnkit demo TASK`: the module whose run_demo(out: str) shows the task (trains its quick model if needed)
DEMOS: dict[str, str] = {
    "translation": "attnkit.apps.translation.demo",
    "speech": "attnkit.apps.speech.demo",
    "vision": "attnkit.apps.vision.demo",
    "sentiment": "attnkit.apps.sentiment.demo",
    "summarization": "attnkit.apps.summarization.demo",
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UsageError(f"TASK {shown(task)}; expected one of {', '.join(TASKS)}")
    return task


def check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices`` (``None``: the first choice); else a UsageError."""
    if value is None:
        return choices[0]
    if value not in choices:
        raise UsageError(f"{option} {shown(value)}; expected one of {', '.join(choices)}")
    return value


def task_module(task: str):
    """The package of ``task`` (imported on demand: it needs the apps extra)."""
    return importlib.import_module(TASKS[check_task(task)].module)


def task_data(task: str):
    """The data module of ``task`` (``data_status()``, ``require_data(data)``)."""
    return importlib.import_module(TASKS[check_task(task)].data)


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
                score = "  " + "  ".join(f"{k} {v:.3g}" for k, v in test.items() if isinstance(v, (int, float)))[:80]
            except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
                score = "  (results unreadable)"
        model = config.get("model", {})
        kind = model.get("kind", "?") if isinstance(model, dict) else str(model)
        out.append(f"    {cfg.parent}  {kind}{score}")
    return out


def run(args: argparse.Namespace) -> int:
    root = Path(args.runs)
    for name, task in TASKS.items():
        print(f"{name}: {task.summary}")
        print(f"  use a run:  attnkit {task.verb} RUN ...;  train: attnkit train {name} --quick "
              f"[--model {'|'.join(task.models)}]")
        try:
            status = importlib.import_module(task.data).data_status()
        except ModuleNotFoundError as exc:
            status = {"(all)": f"missing package {exc.name!r}: run 'make data'"}
        for data, state in status.items():
            print(f"  data {data}: {state}")
        runs = _runs(root, name)
        print(f"  runs in {root}/: {len(runs)}")
        for line in runs:
            print(line)
    return 0
