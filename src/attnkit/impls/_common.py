"""Pieces every implementation shares: options declared as data and read in one way, the
prepared queries and keys of a call (normalised for cosine), and (re-exported from
:mod:`attnkit.shapes`) the index grid of a tile for score modifiers and masks.

Shape legend: B batch, H query heads, T queries, S keys, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from ..errors import AttnKitError
from ..shapes import index_grid

__all__ = ["Option", "read_options", "prepared_qk", "index_grid"]


@dataclass(frozen=True)
class Option:
    """One option an implementation accepts in ``attention(..., options={...})``.

    ``kind`` is the accepted type (``int`` excludes ``bool``); ``minimum`` bounds numbers from below;
    ``choices`` lists the accepted values; ``check`` returns why a value is refused, or None.
    """

    kind: type | tuple[type, ...]
    default: Any
    doc: str
    minimum: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    def parse(self, impl: str, name: str, value: Any) -> Any:
        """``value`` checked against the declaration; raises :class:`AttnKitError` naming the option."""
        if value is None and self.default is None:
            return None
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise AttnKitError(f"{impl} option {name!r} must be {names} ({self.doc}); got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise AttnKitError(f"{impl} option {name!r} must be >= {self.minimum} ({self.doc}); got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise AttnKitError(f"{impl} option {name!r} must be one of {list(self.choices)}; got {value!r}")
        if self.check is not None and (why := self.check(value)):
            raise AttnKitError(f"{impl} option {name!r}: {why}; got {value!r}")
        return value


def read_options(call: AttentionCall, impl: str, declared: Mapping[str, Option]) -> dict[str, Any]:
    """Every declared option of ``impl``: the call's value, checked, or the default. Unknown names
    never get here (dispatch refuses them with the list of accepted ones)."""
    return {name: opt.parse(impl, name, call.options[name]) if name in call.options else opt.default
            for name, opt in declared.items()}


def prepared_qk(call: AttentionCall) -> tuple[Tensor, Tensor, float]:
    """``(q, k, scale)`` ready for a dot product: for cosine scores both are normalised and the
    temperature is folded into the scale. ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``."""
    q, k, scale = call.q, call.k, call.scale
    if call.score.kind == "cosine":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = scale / call.score.params["temperature"]
    return q, k, scale
