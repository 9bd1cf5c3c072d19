"""The ``attnkit`` command line. Each subcommand lives in its own module of
:mod:`attnkit.commands` and exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a function of the parsed arguments returning an exit code).

Every command checks all of its arguments before any heavy work. A mistake (a bad argument, a
missing file or optional package, an :class:`~attnkit.errors.AttnKitError` from the library) prints one line
``error: <option> <what it got>; expected <what is valid>`` to stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands
from .commands._args import Parser, one_line
from .errors import AttnKitError

__all__ = ["main", "build_parser"]

USAGE_ERROR = 2  # exit code of a mistake in the arguments or the input files


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in :mod:`attnkit.commands`. Its errors
    raise :class:`attnkit.commands._args.UsageError` (an ``AttnKitError``) instead of exiting."""
    parser = Parser(
        prog="attnkit",
        description="attnkit: attention mechanisms as composable parts (project, score, weight, combine).",
    )
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def _fail(message: str) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnkit`` console script; returns the exit code (2 on a user mistake)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except AttnKitError as exc:
        return _fail(str(exc))
    except OSError as exc:  # a file that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except ModuleNotFoundError as exc:  # an optional dependency (the models, viz or hf extra)
        if not exc.name or exc.name.split(".")[0] == "attnkit":
            raise
        return _fail(f"this command needs the package {exc.name!r}; expected it installed "
                     f"(pip install 'attnkit[models]' for the models, 'attnkit[viz]' for pictures)")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
