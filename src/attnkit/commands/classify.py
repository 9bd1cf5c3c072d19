"""``attnkit classify RUN TEXT``: the sentiment of a text with a trained sentiment run: the label,
its probability and the most attended words; ``--html`` / ``--out`` write the highlighted text."""

from __future__ import annotations

import argparse

from ._args import UsageError, int_range, output_file, picture_formats, shown

MAX_CHARS = 40_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify the sentiment of a text with a trained sentiment run")
    p.add_argument("run", metavar="RUN", help="a sentiment run folder written by 'attnkit train sentiment'")
    p.add_argument("text", metavar="TEXT", help="the text to classify (a sentence; a whole review for a "
                                                "model trained on reviews)")
    p.add_argument("--top", type=int_range(1, 50), default=8, help="how many attended words to list (default 8)")
    p.add_argument("--html", type=output_file(["html", "htm"], "HTML file"), default=None,
                   help="write the text shaded by attention here (.html)")
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="write the highlight picture here (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = args.text
    if not text.strip():
        raise UsageError(f"TEXT {shown(text)} is empty; expected some words to classify")
    if len(text) > MAX_CHARS:
        raise UsageError(f"TEXT has {len(text)} characters; expected at most {MAX_CHARS}")
    from ..apps.sentiment import load_run
    from ..apps.sentiment.highlight import highlight_html, highlight_png, top_tokens
    from ..apps.sentiment.loaded import MAX_WORDS

    lr = load_run(args.run)
    n = len(text.split())
    if n > MAX_WORDS[lr.data]:
        raise UsageError(f"TEXT has {n} words; expected at most {MAX_WORDS[lr.data]} for a model trained on {lr.data}")
    pred = lr.predict([text])[0]
    print(f"{pred.label}  (probability {pred.probability:.3f}, model {lr.kind})")
    top = top_tokens(pred, args.top)
    if top:
        print("attended: " + "  ".join(f"{w} {s:.3f}" for w, s in top))
    else:
        print(f"attended: (the {lr.kind} model has no attention to show)")
    if args.html is not None:
        print(f"wrote {highlight_html([pred], args.html, ['TEXT'])}")
    if args.out is not None:
        if pred.token_weights is None:
            print(f"no picture: the {lr.kind} model has no attention to show")
        else:
            print(f"wrote {highlight_png(pred, args.out, 'TEXT')}")
    return 0
