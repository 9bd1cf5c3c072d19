"""``attnkit demo``: the four steps of attention on a short sentence."""

from __future__ import annotations

import argparse

from ._args import check_sentence, output_file, picture_formats

MAX_WORDS = 24  # the score and weight matrices are printed, one column per word


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show project -> score -> weight -> combine on a sentence, check every impl")
    p.add_argument("--sentence", default=None,
                   help=f"the sentence to attend over, 1 to {MAX_WORDS} words (default: a built-in one)")
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default="attnkit-demo.png",
                   help="heatmap path, .png, .svg or .pdf (needs matplotlib; default attnkit-demo.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.demo import SENTENCE, run_demo

    sentence = SENTENCE if args.sentence is None else check_sentence("--sentence", args.sentence,
                                                                     max_words=MAX_WORDS)
    run_demo(args.out, sentence)
    return 0
