"""``attnkit train TASK``: train one model of an application into a run folder."""

from __future__ import annotations

import argparse

from ._args import UsageError, int_range, output_dir, positive_int, shown
from .apps import TASKS, check_choice, check_task, task_data, task_module


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a number of minutes > 0") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a number of minutes > 0")
    return value


TASK_OPTIONS = ("fold", "tune_layers", "encoder")  # train() options of some tasks only (commands.apps: train_options)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an application's model into a run folder")
    p.add_argument("task", metavar="TASK", help=f"the application: {', '.join(TASKS)}")
    models = "; ".join(f"{name}: {', '.join(task.models)}" for name, task in TASKS.items())
    datasets = "; ".join(f"{name}: {', '.join(task.datasets)}" for name, task in TASKS.items())
    p.add_argument("--data", default=None, help=f"data set (default: the task's first) - {datasets}")
    p.add_argument("--lang", default="fr", choices=["fr", "de"],
                   help="translation: target language of number words (default fr)")
    p.add_argument("--model", default=None, help=f"model (default: the task's first) - {models}")
    p.add_argument("--fold", type=int_range(1, 10), default=None,
                   help="sentiment: the test fold of the ten fixed folds (default 10; the next fold validates)")
    p.add_argument("--tune-layers", type=int_range(1, 6), default=None,
                   help="sentiment --model minilm-ft or minilm-ft-lex: how many top MiniLM layers to fine-tune "
                        "(default: the preset's)")
    p.add_argument("--encoder", default=None, choices=["minilm", "minilm-sentft"],
                   help="sentiment: the MiniLM whose states the frozen models read (minilm-sentft: fine-tuned on the "
                        "sentence set first; default minilm)")
    p.add_argument("--quick", action="store_true", help="the small preset (well under a minute)")
    p.add_argument("--budget-minutes", type=_minutes, default=None,
                   help="wall-clock budget of the training loop (default: the preset's)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="step budget (default: the preset's)")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="steps between validation evaluations (default: the preset's)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int_range(1, 256), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=output_dir, default=None,
                   help="run folder (default runs/<task>-<model>-<time>/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    task = TASKS[check_task(args.task)]
    model = check_choice("--model", args.model, task.models)
    data = check_choice("--data", args.data, task.datasets)
    if args.resume and (args.out is None or not (args.out / "last.safetensors").exists()):
        where = "no --out" if args.out is None else f"{shown(str(args.out))} has no last.safetensors"
        raise UsageError(f"--resume needs --out with a checkpoint; got {where}")
    if not args.resume and args.out is not None and (args.out / "config.json").exists():
        raise UsageError(f"--out {shown(str(args.out))} already holds a run; expected a new folder, or --resume")
    mod = task_module(args.task)
    task_data(args.task).require_data(data)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    for name in TASK_OPTIONS:  # options only some tasks take
        if getattr(args, name) is not None and name not in task.train_options:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} applies to {', '.join(n for n, t in TASKS.items() if name in t.train_options)}; "
                             f"got task {args.task!r}")
    options = {name: getattr(args, name) for name in task.train_options if getattr(args, name) is not None}
    mod.train(data=data, model=model, quick=args.quick, budget_minutes=args.budget_minutes,
              max_steps=args.max_steps, eval_every=args.eval_every, out=args.out, seed=args.seed,
              progress=not args.no_progress, resume=args.resume, **options)
    return 0
