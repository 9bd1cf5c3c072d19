"""``attnkit similarity "sentence a" "sentence b"``: cosine similarity of two sentences'
all-MiniLM-L6-v2 embeddings (mean pooled, normalised)."""

from __future__ import annotations

import argparse

from ._args import check_sentence, impl_names, name_in


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similarity", help="cosine similarity of two sentences (all-MiniLM-L6-v2 embeddings)")
    p.add_argument("a", help="first sentence")
    p.add_argument("b", help="second sentence")
    p.add_argument("--impl", type=name_in(lambda: impl_names(auto=True), "implementation"), default="auto",
                   help="attnkit implementation running the attention (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    a, b = check_sentence("first sentence", args.a), check_sentence("second sentence", args.b)
    from ..models import load_minilm

    model, _ = load_minilm(impl=args.impl)
    e = model.encode([a, b])
    print(f"{(e[0] @ e[1]).item():.4f}")
    return 0
