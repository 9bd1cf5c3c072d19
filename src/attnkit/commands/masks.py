"""``attnkit masks``: list the sparse patterns, or show one (density, tile picture, PNG).

    attnkit masks list
    attnkit masks show bigbird --T 1024 --out bigbird.png
    attnkit masks show strided --T 4096 --param stride=64
"""

from __future__ import annotations

import argparse

from ..errors import AttnKitError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="sparse attention patterns: list them, show one (density, picture)")
    msub = p.add_subparsers(dest="masks_command", metavar="ACTION")
    ls = msub.add_parser("list", help="the pattern names and their default parameters")
    ls.set_defaults(func=run_list)
    show = msub.add_parser("show", help="density and tile picture of a pattern; --out draws it (matplotlib)")
    show.add_argument("pattern", help="pattern name (see 'attnkit masks list')")
    show.add_argument("--T", type=int, default=1024, help="query length (default 1024)")
    show.add_argument("--S", type=int, default=None, help="key length (default: T)")
    show.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="pattern parameter, e.g. window=128, stride=32, causal=true (repeatable)")
    show.add_argument("--block", type=int, default=64, help="tile size for the block density (default 64)")
    show.add_argument("--out", default=None, help="write a picture here (.png, .svg, .pdf)")
    show.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        return tuple(int(x) for x in text.split(",") if x)
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_params(items: list[str]) -> dict:
    """``["window=128", "causal=true"]`` -> ``{"window": 128, "causal": True}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise AttnKitError(f"--param expects KEY=VALUE; got {item!r}")
        key, val = item.split("=", 1)
        out["globals_" if key == "globals" else key] = _value(val)
    return out


def run_list(args: argparse.Namespace) -> int:
    import inspect

    from ..masks import patterns

    for name, fn in patterns.PATTERNS.items():
        params = ", ".join(f"{p.name}={p.default!r}" for p in inspect.signature(fn).parameters.values()
                           if p.default is not inspect.Parameter.empty)
        print(f"{name:<16} {params}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ..masks import patterns

    mask = patterns.build(args.pattern, **parse_params(args.param))
    t, s = args.T, args.S or args.T
    dens = patterns.density(mask, t, s)
    bm = mask.blocks(t, s, args.block)
    print(f"{args.pattern}: {mask!r}")
    print(f"T={t} S={s}: kept pairs {patterns.pair_count(mask, t, s)} of {t * s} (density {dens:.4f}); "
          f"{args.block}x{args.block} tiles kept {bm.density():.3f} ({bm.counts()})")
    if bm.shape[0] <= 64 and bm.shape[1] <= 128:
        print("tiles: # full, + partial, . empty")
        print(bm.to_string())
    if args.out:
        from ..masks.plot import save_mask

        print(f"wrote {save_mask(mask, args.out, t, s, block=args.block, title=args.pattern)}")
    return 0
