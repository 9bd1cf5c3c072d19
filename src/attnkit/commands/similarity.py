"""``attnkit similarity "sentence a" "sentence b"``: cosine similarity of two sentences'
all-MiniLM-L6-v2 embeddings (mean pooled, normalised)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similarity", help="cosine similarity of two sentences (all-MiniLM-L6-v2 embeddings)")
    p.add_argument("a", help="first sentence")
    p.add_argument("b", help="second sentence")
    p.add_argument("--impl", default="auto", help="attnkit implementation running the attention (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import AttnKitError
    from ..models import load_minilm

    try:
        model, _ = load_minilm(impl=args.impl)
        e = model.encode([args.a, args.b])
    except AttnKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{(e[0] @ e[1]).item():.4f}")
    return 0
