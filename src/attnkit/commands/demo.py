"""``attnkit demo``: the four steps of attention on a short sentence. ``attnkit demo translation``:
trains the quick number-words model if none is cached, translates a few numbers and shows the
alignment."""

from __future__ import annotations

import argparse

from ._args import check_sentence, output_file, picture_formats, shown
from .apps import DEMOS

MAX_WORDS = 24  # the score and weight matrices are printed, one column per word


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show project -> score -> weight -> combine on a sentence, check every impl; "
                                    "'demo TASK': an application's quick model and its attention picture")
    p.add_argument("task", nargs="?", default=None, metavar="TASK",
                   help=f"optional application demo: {', '.join(DEMOS)}")
    p.add_argument("--sentence", default=None,
                   help=f"the sentence to attend over, 1 to {MAX_WORDS} words (default: a built-in one)")
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="picture path, .png, .svg or .pdf (needs matplotlib; default attnkit-demo.png, "
                        "attnkit-demo-TASK.png for an application's demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.task is not None:
        from ._args import UsageError

        if args.task not in DEMOS:
            raise UsageError(f"TASK {shown(args.task)}; expected one of {', '.join(DEMOS)} (or none)")
        if args.sentence is not None:
            raise UsageError("--sentence is for the four-steps demo; expected no --sentence with a TASK")
        import importlib

        importlib.import_module(DEMOS[args.task]).run_demo(args.out or f"attnkit-demo-{args.task}.png")
        return 0
    from ..apps.demo import SENTENCE, run_demo

    sentence = SENTENCE if args.sentence is None else check_sentence("--sentence", args.sentence,
                                                                     max_words=MAX_WORDS)
    run_demo(args.out or "attnkit-demo.png", sentence)
    return 0
