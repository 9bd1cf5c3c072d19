"""``attnkit explain "sentence" --out report/``: every attention view of one sentence on the real
all-MiniLM-L6-v2 (PNG heatmaps, token lines, rollout, flow, head statistics and one offline HTML)."""

from __future__ import annotations

import argparse
import sys
import warnings

from ._args import UsageError, check_sentence, impl_names, int_range, name_in, output_dir, picture_formats

MAX_FLOW_TOKENS = 64
MIN_TOKENS, MAX_TOKENS = 3, 512  # the model's position table holds 512; [CLS] x [SEP] needs 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="attention views of one sentence on all-MiniLM-L6-v2 (PNG + offline HTML)")
    p.add_argument("sentence", help="the text to explain")
    p.add_argument("--out", type=output_dir, default="attnkit-report",
                   help="output folder (created in an existing folder; default: attnkit-report)")
    p.add_argument("--impl", type=name_in(lambda: impl_names(auto=True), "implementation"), default="auto",
                   help="attnkit implementation running the attention (default: auto)")
    p.add_argument("--max-tokens", type=int_range(MIN_TOKENS, MAX_TOKENS), default=128,
                   help=f"truncate longer input to this many tokens, with a warning (default 128, "
                        f"{MIN_TOKENS} to {MAX_TOKENS})")
    p.add_argument("--no-flow", action="store_true", help="skip attention flow (T^2 max-flow problems)")
    p.add_argument("--no-png", action="store_true", help="write only the HTML report and statistics")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sentence = check_sentence("sentence", args.sentence)
    if not args.no_png and picture_formats() is None:
        raise UsageError("explain's PNG views need matplotlib; expected it installed (pip install 'attnkit[viz]') "
                         "or --no-png")
    from ..interpret import explain_sentence
    from ..models import load_minilm

    model, tok = load_minilm(impl=args.impl, max_length=args.max_tokens)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n_tokens = len(tok.tokenize(sentence))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    flow = not args.no_flow
    if flow and n_tokens > MAX_FLOW_TOKENS:
        print(f"note: {n_tokens} tokens > {MAX_FLOW_TOKENS}: attention flow skipped (use a shorter input)",
              file=sys.stderr)
        flow = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning was printed above
        paths = explain_sentence(model, tok, sentence, args.out, impl=args.impl, flow=flow, png=not args.no_png)
    print(f"{n_tokens} tokens, {model.config.num_hidden_layers} layers x {model.config.num_attention_heads} heads")
    print(f"wrote {len(paths)} views to {args.out}/:")
    for name, path in paths.items():
        print(f"  {name:<14} {path}")
    print(f"open {paths['html']} in a browser (self-contained, works offline)")
    return 0
