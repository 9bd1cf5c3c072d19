"""The one exception family of attnkit.

Every error raised on bad user input is an :class:`AttnKitError` (a ``ValueError``), and its
message names the argument, what was received and what was expected.
"""

from __future__ import annotations

__all__ = ["AttnKitError", "ShapeError", "DTypeError", "UnknownNameError", "UnsupportedError"]


class AttnKitError(ValueError):
    """Root of every attnkit error on bad input."""

    def __str__(self) -> str:  # plain message, also for the KeyError subclass
        return str(self.args[0]) if self.args else ""


class ShapeError(AttnKitError):
    """A tensor has the wrong rank or sizes that do not agree."""


class DTypeError(AttnKitError):
    """A tensor has the wrong dtype, or tensors disagree on dtype or device."""


class UnknownNameError(AttnKitError, KeyError):
    """A score, weight, mask or implementation name that is not registered."""


class UnsupportedError(AttnKitError):
    """The requested implementation cannot do what was asked (the message lists why)."""


def unknown_name(kind: str, name: object, valid: list[str]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` name, listing the valid ones."""
    return UnknownNameError(f"unknown {kind} {name!r}; valid {kind} names: {', '.join(sorted(valid))}")
