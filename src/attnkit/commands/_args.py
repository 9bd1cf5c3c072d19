"""Argument types and checks shared by the subcommands.

Every check raises :class:`UsageError` (an :class:`~attnkit.errors.AttnKitError`) or, as an
argparse ``type=``, :class:`argparse.ArgumentTypeError`; both end as one line
``error: <option> <what it got>; expected <what is valid>`` on stderr and exit code 2
(see :func:`attnkit.cli.main`).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

from ..errors import AttnKitError

__all__ = ["UsageError", "Parser", "shown", "positive_int", "int_range", "non_negative_int", "name_in",
           "output_file", "output_dir", "picture_formats", "impl_names", "check_sentence", "one_line"]


class UsageError(AttnKitError):
    """A command-line argument that cannot be used (the message names it, what it got, what is valid)."""


def one_line(message: str) -> str:
    """``message`` on a single line: its lines joined with ``"; "`` (with a space after a colon)."""
    out = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


def shown(text: object) -> str:
    """How a value the user typed is quoted in a message: bare when it is one plain word."""
    s = str(text)
    return s if s and not any(c.isspace() for c in s) and "'" not in s else repr(s)


_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"argument (\S+): invalid choice: '?(.*?)'? \(choose from (.*)\)$"),
     lambda m: f"{m[1]} {shown(m[2])}; expected one of {m[3].replace(chr(39), '')}"),
    (re.compile(r"argument (\S+): invalid (int|float) value: '(.*)'$"),
     lambda m: f"{m[1]} {shown(m[3])}; expected {'an integer' if m[2] == 'int' else 'a number'}"),
    (re.compile(r"argument (\S+): expected one argument$"), lambda m: f"{m[1]} got no value; expected one value"),
    (re.compile(r"argument (\S+): expected at least one argument$"),
     lambda m: f"{m[1]} got no value; expected one or more values"),
    (re.compile(r"argument (\S+): (.*)$", re.S), lambda m: f"{m[1]} {m[2]}"),
]


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors raise :class:`UsageError` with a one-line
    message (no usage block); its subparsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        for pattern, fmt in _PATTERNS:
            if m := pattern.match(message):
                raise UsageError(one_line(fmt(m)))
        raise UsageError(one_line(f"{message}; see '{self.prog} --help'"))


# ----------------------------------------------------------------------------------------------
# argparse types
# ----------------------------------------------------------------------------------------------


def _int(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected {expected}") from None


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        value = _int(text, expected)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{shown(text)}; expected {expected}")
        return value

    parse.__name__ = f"int_range({low}, {high})"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)


def name_in(valid: Iterable[str] | Callable[[], Iterable[str]], kind: str = "name") -> Callable[[str], str]:
    """An argparse type: one of ``valid`` (a collection, or a function giving it when parsing);
    ``kind`` names the type in argparse's own messages."""

    def parse(text: str) -> str:
        names = list(valid() if callable(valid) else valid)
        if text not in names:
            raise argparse.ArgumentTypeError(f"{shown(text)}; expected one of {', '.join(names)}")
        return text

    parse.__name__ = kind
    return parse


def impl_names(*, auto: bool = False, extra: Iterable[str] = ()) -> list[str]:
    """The registered implementation names (with ``"auto"`` first when ``auto``, then ``extra``)."""
    from ..registry import list_impls

    return [*(["auto"] if auto else []), *sorted(list_impls()), *extra]


def picture_formats() -> list[str] | None:
    """File suffixes matplotlib can write (``png``, ``svg``, ``pdf`` ...), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return sorted(Figure().canvas.get_supported_filetypes())


def _writable_parent(path: Path, text: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise argparse.ArgumentTypeError(f"{shown(text)}: folder {shown(parent)} does not exist; "
                                         f"expected a path in an existing folder")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{shown(text)}: {shown(parent)} is a file; expected a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{shown(text)}: folder {shown(parent)} is not writable; "
                                         f"expected a writable folder")


def output_file(suffixes: Iterable[str] | Callable[[], Iterable[str] | None] | None = None,
                what: str = "file") -> Callable[[str], Path]:
    """An argparse type: a file to write, in an existing writable folder, not a folder itself,
    ending in one of ``suffixes`` (without the dot; a function is called when parsing, and
    None there or here allows any)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{shown(text)}; expected a {what} path")
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{shown(text)} is a folder; expected a {what} path")
        _writable_parent(path, text)
        if path.exists() and not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not writable; expected a writable {what}")
        allowed = suffixes() if callable(suffixes) else suffixes
        if allowed is not None:
            allowed = sorted(allowed)
            if path.suffix.lower().lstrip(".") not in allowed:
                raise argparse.ArgumentTypeError(
                    f"{shown(text)}; expected a {what} name ending in {', '.join('.' + s for s in allowed)}")
        return path

    parse.__name__ = what
    return parse


def output_dir(text: str) -> Path:
    """An argparse type: a folder to write into (created if missing), whose parent exists."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a folder path")
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{shown(text)} is a file; expected a folder (created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not writable; expected a writable folder")
        return path
    _writable_parent(path, text)
    return path


def check_sentence(option: str, text: str, *, max_words: int | None = None) -> str:
    """``text`` stripped; a :class:`UsageError` if it is blank or has more than ``max_words`` words."""
    words = text.split()
    if not words:
        raise UsageError(f"{option} {shown(text)} is empty; expected some text")
    if max_words is not None and len(words) > max_words:
        raise UsageError(f"{option} has {len(words)} words; expected 1 to {max_words} words")
    return text.strip()


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a number >= 0") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a number >= 0")
    return value


def add_beam_options(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--beam`` (1 to 64, default 1: greedy) and ``--length-penalty`` (>= 0, default 1.0), the
    decoding options every sequence command shares; ``what`` prefixes the beam's help."""
    p.add_argument("--beam", type=int_range(1, 64), default=1, help=f"{what}beam size (default 1: greedy)")
    p.add_argument("--length-penalty", type=non_negative_float, default=1.0,
                   help="beam ranking: log p / length ** this (default 1.0)")
