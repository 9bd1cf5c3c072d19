"""``attnkit demo``: the four steps of attention on a short sentence."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show project -> score -> weight -> combine on a sentence, check every impl")
    p.add_argument("--sentence", default=None, help="the sentence to attend over (default: a built-in one)")
    p.add_argument("--out", default="attnkit-demo.png", help="heatmap PNG path (needs matplotlib)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.demo import SENTENCE, run_demo

    run_demo(args.out, args.sentence or SENTENCE)
    return 0
