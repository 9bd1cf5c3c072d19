"""Choosing an implementation: a priority list plus ``not_supported_reasons``.

``impl="auto"`` walks the registered *exact* implementations in priority order (or the order
given to :func:`use_impls`) and takes the first with no reasons against it: neither a missing
capability (:func:`not_supported_reasons`) nor a cost-model objection (``ImplSpec.auto_check``,
e.g. "dense sdpa is faster at this size"). A pinned implementation runs whenever it is capable,
whatever its cost model says, and otherwise refuses with every reason, never falling back.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import UnsupportedError
from .registry import AttentionCall, ImplSpec, get_impl, list_impls

__all__ = ["not_supported_reasons", "auto_reasons", "select", "use_impls", "DispatchReport", "explain"]

_ALLOWED: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("attnkit_impls", default=None)


def not_supported_reasons(spec: ImplSpec, call: AttentionCall) -> list[str]:
    """Every reason ``spec`` cannot run ``call`` (empty list: it can)."""
    reasons: list[str] = []
    if spec.available is not None and (why := spec.available()):
        return [why]
    if call.q.device.type not in spec.devices:
        reasons.append(f"device {call.q.device.type} not in {sorted(spec.devices)}")
    if call.q.dtype not in spec.dtypes:
        reasons.append(f"dtype {call.q.dtype} not supported")
    if spec.max_head_dim is not None and max(call.head_dim, call.v_dim) > spec.max_head_dim:
        reasons.append(f"head dim {max(call.head_dim, call.v_dim)} > {spec.max_head_dim}")
    if spec.scores is not None and call.score.name not in spec.scores:
        reasons.append(f"score {call.score.name!r} not in {sorted(spec.scores)}")
    if spec.weights is not None and call.weight.name not in spec.weights:
        reasons.append(f"weight {call.weight.name!r} not in {sorted(spec.weights)}")
    if call.mask is not None and spec.mask_types is not None:
        bad = sorted({type(m).__name__ for m in call.mask.leaves() if not isinstance(m, spec.mask_types)})
        if bad:
            reasons.append(f"mask kinds {bad} not supported")
    if call.score_mods:
        if spec.score_mods == "none":
            reasons.append("score modifiers / bias not supported")
        elif spec.score_mods == "additive" and not all(m.additive for m in call.score_mods):
            reasons.append("only additive score modifiers (bias, alibi) supported")
    if call.dropout_p > 0 and not spec.dropout:
        reasons.append("dropout not supported")
    if call.requires_grad and not spec.grad:
        reasons.append("no backward (inputs require grad)")
    if call.return_weights and not spec.returns_weights:
        reasons.append("cannot return weights")
    unknown = set(call.options) - spec.options
    if unknown:
        reasons.append(f"unknown options {sorted(unknown)} (accepts {sorted(spec.options) or 'none'})")
    if spec.check is not None:
        reasons += spec.check(call)
    return reasons


def auto_reasons(spec: ImplSpec, call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` passes over ``spec`` for ``call``: missing capabilities, then its cost model."""
    reasons = not_supported_reasons(spec, call)
    if not reasons and spec.auto_check is not None:
        reasons = spec.auto_check(call)
    return reasons


def _candidates() -> list[str]:
    allowed = _ALLOWED.get()
    if allowed is not None:
        return list(allowed)
    return [n for n in list_impls() if get_impl(n).exact]


@contextmanager
def use_impls(names: Sequence[str]) -> Iterator[None]:
    """Within the block, ``impl="auto"`` chooses only among ``names``, in that order.

    >>> import attnkit
    >>> with attnkit.use_impls(["reference"]):
    ...     pass
    """
    for n in names:
        get_impl(n)  # raises UnknownNameError on a typo
    token = _ALLOWED.set(tuple(names))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


@dataclass(frozen=True)
class DispatchReport:
    """Which implementation runs a call, and why each other one does not."""

    chosen: str | None
    reasons: dict[str, list[str]]  # impl -> reasons it was not taken ([] for the chosen one)
    problem: str

    def __str__(self) -> str:
        lines = [f"attention call: {self.problem}", f"chosen: {self.chosen or 'none'}"]
        for name, why in self.reasons.items():
            mark = "->" if name == self.chosen else "  "
            detail = "ok" if not why else "; ".join(why)
            lines.append(f" {mark} {name:<14} {detail}")
        return "\n".join(lines)


def explain(call: AttentionCall, impl: str = "auto") -> DispatchReport:
    """The decision for ``call``: the chosen implementation and every refusal."""
    names = _candidates() if impl == "auto" else [impl]
    reasons: dict[str, list[str]] = {}
    chosen = None
    for name in names:
        spec = get_impl(name)
        why = auto_reasons(spec, call) if impl == "auto" else not_supported_reasons(spec, call)
        reasons[name] = why
        if not why and chosen is None:
            chosen = name
    if impl == "auto":
        for name in list_impls():  # say why approximate / excluded impls were not considered
            if name not in reasons:
                spec = get_impl(name)
                reasons[name] = ["approximate: only used when asked for by name" if not spec.exact
                                 else "excluded by use_impls()"]
    return DispatchReport(chosen, reasons, call.describe())


def select(call: AttentionCall, impl: str = "auto") -> ImplSpec:
    """The implementation that runs ``call``; raises ``UnsupportedError`` with every reason."""
    report = explain(call, impl)
    if report.chosen is None:
        what = "no implementation supports this call" if impl == "auto" else f"impl {impl!r} cannot run this call"
        raise UnsupportedError(f"{what}:\n{report}")
    return get_impl(report.chosen)
