"""``attnkit translate RUN TEXT``: translate with a trained translation run; ``--out`` writes the
alignment picture of the translation."""

from __future__ import annotations

import argparse

from ._args import add_beam_options, check_sentence, output_file, picture_formats

MAX_WORDS = 100


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate text with a trained translation run")
    p.add_argument("run", metavar="RUN", help="a translation run folder written by 'attnkit train translation'")
    p.add_argument("text", metavar="TEXT", help=f"the text to translate (1 to {MAX_WORDS} words)")
    add_beam_options(p)
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="write the cross-attention picture of the translation here (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = check_sentence("TEXT", args.text, max_words=MAX_WORDS)
    from ..apps.translation import load_run, translate

    lr = load_run(args.run)
    out = translate(lr.model, lr.tokenizer, [text], beam=args.beam, length_penalty=args.length_penalty)[0]
    print(out)
    if args.out is not None:
        from ..apps.translation.pictures import translation_alignment

        made = translation_alignment(lr.model, lr.tokenizer, text, args.out, translation=out)
        if made:
            for path in made:
                print(f"wrote {path}")
        else:
            print(f"no picture: the {lr.config['model']['kind']} model has no attention to show")
    return 0
