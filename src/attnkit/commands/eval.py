"""``attnkit eval TASK RUN``: evaluate a trained run on its held-out test set (writes results.json)."""

from __future__ import annotations

import argparse

from ._args import add_beam_options, int_range
from .apps import TASKS, check_task, task_module


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run on held-out data")
    p.add_argument("task", metavar="TASK", help=f"the application: {', '.join(TASKS)}")
    p.add_argument("run", metavar="RUN", help="a run folder written by 'attnkit train'")
    add_beam_options(p, "sequence tasks: ")
    p.add_argument("--encoder", default=None, choices=["sparse", "lsh"],
                   help="translation transformers: the same weights with the encoder's attention run as a window "
                        "plus a global token (sparse) or by LSH; writes results-encoder-KIND.json")
    p.add_argument("--threads", type=int_range(1, 256), default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    task = TASKS[check_task(args.task)]
    mod = task_module(args.task)
    mod.load_run(args.run)  # refuses a missing or foreign run before any work
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    mod.evaluate_run(args.run, **{name: getattr(args, name) for name in task.eval_options})
    return 0
