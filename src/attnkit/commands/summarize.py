"""``attnkit summarize RUN TEXT_OR_FILE``: a one-line summary from a trained summarization run;
``--out`` writes the cross-attention (and, for the pointer model, copy probability) picture."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import UsageError, add_beam_options, output_file, picture_formats, shown

MAX_WORDS = 5000  # longer inputs are refused
MAX_BYTES = 1_000_000  # a larger file is refused before it is read


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarize", help="summarize text with a trained summarization run")
    p.add_argument("run", metavar="RUN", help="a summarization run folder written by 'attnkit train summarization'")
    p.add_argument("text", metavar="TEXT_OR_FILE",
                   help=f"the text to summarize, or a UTF-8 text file holding it (1 to {MAX_WORDS} words)")
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="write the cross-attention / copy picture of the summary here (.png, .svg, .pdf)")
    add_beam_options(p)
    p.set_defaults(func=run)


def read_input(text: str) -> str:
    """The text of ``TEXT_OR_FILE``: a file's contents when it names a file, else itself; refused
    when empty, too large, not UTF-8, or longer than :data:`MAX_WORDS` words."""
    path = Path(text) if text.strip() and len(text) < 4096 and "\n" not in text else None
    if path is not None and path.is_dir():
        raise UsageError(f"TEXT_OR_FILE {shown(text)} is a folder; expected text or a text file")
    if path is not None and path.is_file():
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UsageError(f"TEXT_OR_FILE {shown(text)} is {size} bytes; expected a text file of at most "
                             f"{MAX_BYTES} bytes")
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"TEXT_OR_FILE {shown(text)} is not UTF-8 text; expected a UTF-8 text file") from None
        where = f"file {shown(text)}"
    else:
        content, where = text, shown(text)
    n = len(content.split())
    if n == 0:
        raise UsageError(f"TEXT_OR_FILE {where} is empty; expected some text to summarize")
    if n > MAX_WORDS:
        raise UsageError(f"TEXT_OR_FILE {where} has {n} words; expected 1 to {MAX_WORDS} words")
    return content


def run(args: argparse.Namespace) -> int:
    text = read_input(args.text)
    from ..apps.summarization import load_run
    from ..apps.summarization.data import words

    lr = load_run(args.run)
    n, limit = len(words(text)), lr.config["src_len"]
    if n == 0:
        raise UsageError(f"TEXT_OR_FILE {shown(args.text)} has no words (letters or digits); expected some text")
    if n > limit:
        print(f"note: the model reads the first {limit} of the {n} words", file=sys.stderr)
    print(lr.summarize([text], beam=args.beam, length_penalty=args.length_penalty)[0])
    if args.out is not None:
        from ..apps.summarization.pictures import copy_picture

        made = copy_picture(lr, text, args.out, beam=args.beam, length_penalty=args.length_penalty)
        if made is None:
            print(f"no picture: the {lr.config['model']['kind']} model has no attention to show")
        else:
            print(f"wrote {made}")
    return 0
