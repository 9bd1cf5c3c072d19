"""The explorer's modes, one module each.

A mode turns a request's inputs into an :class:`~attnkit.explorer.api.Analysis` (views of attention
matrices plus info for the page). Every module of this package whose name does not start with ``_``
is a mode: it defines ``MODE``, a :class:`Mode` subclass. Adding a mode (vision patches, speech
cross-attention over a spectrogram) is adding one module here; the page builds its form from
:meth:`Mode.describe` and shows any view with the generic heatmap, overview, lines and selection
tools. A mode with ``app`` set needs ``attnkit serve --run APP=PATH`` and is hidden without it.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import Input, Mode, text_input

__all__ = ["Input", "Mode", "text_input", "mode_types"]


def mode_types() -> dict[str, type[Mode]]:
    """Every mode class of this package by name, in page order."""
    found: dict[str, type[Mode]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        cls = importlib.import_module(f"{__name__}.{info.name}").MODE
        found[cls.name] = cls
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
