"""``attnkit masks``: list the sparse patterns, or show one (density, tile picture, PNG).

    attnkit masks list
    attnkit masks show bigbird --T 1024 --out bigbird.png
    attnkit masks show strided --T 4096 --param stride=64
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

from ._args import UsageError, int_range, output_file, picture_formats, shown

MAX_TILES = 1 << 28  # (T / block) x (S / block) tiles classified at most (16384 x 16384)
MAX_LENGTH = 1 << 30  # --T, --S and --block at most
MAX_PARAM = (1 << 31) - 1  # integer pattern parameters at most (in absolute value)
PROGRESS_PAIRS = 1 << 32  # T x S from which the steps show a progress bar


def _pattern_names() -> list[str]:
    from ..masks import patterns

    return list(patterns.PATTERNS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="sparse attention patterns: list them, show one (density, picture)")
    msub = p.add_subparsers(dest="masks_command", metavar="ACTION")
    ls = msub.add_parser("list", help="the pattern names and their default parameters")
    ls.set_defaults(func=run_list)
    show = msub.add_parser("show", help="density and tile picture of a pattern; --out draws it (matplotlib)")
    show.add_argument("pattern", choices=_pattern_names(), metavar="PATTERN",
                      help="pattern name (see 'attnkit masks list')")
    show.add_argument("--T", type=int_range(1, MAX_LENGTH), default=1024, help="query length (default 1024)")
    show.add_argument("--S", type=int_range(1, MAX_LENGTH), default=None, help="key length (default: T)")
    show.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="pattern parameter, e.g. window=128, stride=32, causal=true (repeatable; "
                           "'attnkit masks list' shows each pattern's parameters)")
    show.add_argument("--block", type=int_range(1, MAX_LENGTH), default=64,
                      help="tile size for the block density (default 64)")
    show.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                      help="write a picture here (.png, .svg, .pdf)")
    show.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def pattern_params(name: str) -> dict[str, Any]:
    """The parameters pattern ``name`` takes, with their defaults, as the command line spells
    them (``globals``, not ``globals_``)."""
    from ..masks import patterns

    sig = inspect.signature(patterns.PATTERNS[name])
    return {p.name.rstrip("_"): p.default for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _value(text: str) -> bool | int | float | tuple[int, ...]:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        return tuple(int(x) for x in text.split(",") if x.strip())
    try:
        return int(text)
    except ValueError:
        return float(text)


def _typed(item: str, key: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the parameter's default."""
    if isinstance(default, bool):
        kind, ok = "true or false", isinstance(value, bool)
    elif isinstance(default, int):
        kind, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        kind, ok = "integers separated by commas", isinstance(value, tuple)
    else:
        return value
    if not ok:
        raise UsageError(f"--param {shown(item)}; expected {key} to be {kind}")
    if any(abs(v) > MAX_PARAM for v in (value if isinstance(value, tuple) else (value,))):
        raise UsageError(f"--param {shown(item)}; expected integers from {-MAX_PARAM} to {MAX_PARAM}")
    return value


def parse_params(items: list[str], pattern: str | None = None) -> dict[str, Any]:
    """``["window=128", "causal=true"]`` -> ``{"window": 128, "causal": True}``; with ``pattern``,
    every key must be one of its parameters and every value of its parameter's type."""
    valid = pattern_params(pattern) if pattern is not None else None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UsageError(f"--param {shown(item)}; expected KEY=VALUE, e.g. window=128")
        try:
            value = _value(text.strip())
        except ValueError:
            raise UsageError(f"--param {shown(item)}; expected a VALUE that is an integer, a number, "
                             f"true/false or integers separated by commas") from None
        if valid is not None:
            if key not in valid:
                expected = f"one of {', '.join(valid)}" if valid else f"no --param ({pattern} takes no parameters)"
                raise UsageError(f"--param {shown(item)}: {pattern} has no parameter {key!r}; expected {expected}")
            value = _typed(item, key, value, valid[key])
        if key in out:
            raise UsageError(f"--param {key} given twice; expected each parameter once")
        out[key] = value
    return {("globals_" if k == "globals" else k): v for k, v in out.items()}


def run_list(args: argparse.Namespace) -> int:
    from ..masks import patterns

    for name in patterns.PATTERNS:
        params = ", ".join(f"{k}={v!r}" for k, v in pattern_params(name).items())
        print(f"{name:<16} {params or '(no parameters)'}")
    return 0


def _check_size(t: int, s: int, block: int) -> None:
    tiles = -(-t // block) * -(-s // block)
    if tiles > MAX_TILES:
        least = block
        while -(-t // least) * -(-s // least) > MAX_TILES:
            least *= 2
        raise UsageError(f"--block {block} at T={t} S={s} gives {tiles} tiles; expected at most {MAX_TILES} "
                         f"(use --block {least} or more, or a smaller --T / --S)")


def run_show(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import AttnKitError
    from ..masks import patterns

    t, s = args.T, args.S or args.T
    _check_size(t, s, args.block)
    params = parse_params(args.param, args.pattern)
    try:
        mask = patterns.build(args.pattern, **params)
    except AttnKitError as exc:
        given = " ".join(f"--param {item}" for item in args.param)
        raise UsageError(f"{given or args.pattern}: {exc}") from exc
    if args.out is not None and picture_formats() is None:
        raise UsageError(f"--out {shown(args.out)} needs matplotlib; expected it installed "
                         f"(pip install 'attnkit[viz]')")

    steps = ["count pairs", "classify tiles", *(["draw"] if args.out is not None else [])]
    bar = tqdm(steps, desc=f"masks show {args.pattern}", unit="step", file=sys.stderr, leave=False,
               disable=t * s < PROGRESS_PAIRS)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "count pairs":
            kept = patterns.pair_count(mask, t, s, block=max(128, args.block))
            dens = kept / float(t * s)
        elif step == "classify tiles":
            bm = mask.blocks(t, s, args.block)
            tile_dens, counts = bm.density(), bm.counts()
        else:
            from ..masks.plot import save_mask

            path = save_mask(mask, args.out, t, s, block=args.block, title=args.pattern, density=dens,
                             block_density=tile_dens)
    print(f"{args.pattern}: {mask!r}")
    print(f"T={t} S={s}: kept pairs {kept} of {t * s} (density {dens:.4g}); "
          f"{args.block}x{args.block} tiles kept {tile_dens:.4g} ({counts})")
    if bm.shape[0] <= 64 and bm.shape[1] <= 128:
        print("tiles: # full, + partial, . empty")
        print(bm.to_string())
    if args.out is not None:
        print(f"wrote {path}")
    return 0
