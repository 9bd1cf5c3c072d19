"""Choosing an implementation: a priority list plus ``not_supported_reasons``.

``impl="auto"`` walks the registered *exact* implementations in priority order (or the order
given to :func:`use_impl`) and takes the first with no reasons against it: neither a missing
capability (:func:`not_supported_reasons`) nor a cost-model objection (``ImplSpec.auto_check``,
e.g. "dense sdpa is faster at this size"). A pinned implementation runs whenever it is capable,
whatever its cost model says, and otherwise refuses with every reason, never falling back.

One way to choose, read by every entry point (``attention``, the :mod:`attnkit.nn` modules, the
models and the Hugging Face integration, which all pass ``impl="auto"`` unless told otherwise):
``with attnkit.use_impl("blockwise"):`` pins, ``with attnkit.use_impl(["blockwise", "sdpa"]):``
restricts ``auto`` to those, in that order. A name given explicitly to a call wins over the block.

Decisions are memoised per problem signature (shapes, dtype, device, mask, score, weight, flags),
so a decode loop pays for the reasoning once.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .call import AttentionCall
from .errors import AttnKitError, UnsupportedError
from .masks import Mask
from .masks.plan import mask_key
from .registry import ImplSpec, get_impl, list_impls, not_supported_reasons, registry_version

__all__ = ["not_supported_reasons", "auto_reasons", "select", "use_impl", "use_impls", "DispatchReport", "explain"]

# the active choice: None (auto), ("pin", name) or ("restrict", names)
_CHOICE: contextvars.ContextVar[tuple[str, tuple[str, ...]] | None] = contextvars.ContextVar(
    "attnkit_impl_choice", default=None)


def auto_reasons(spec: ImplSpec, call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` passes over ``spec`` for ``call``: missing capabilities, then its cost model."""
    reasons = not_supported_reasons(spec, call)
    if not reasons and spec.auto_check is not None:
        reasons = spec.auto_check(call)
    return reasons


def _effective(impl: str) -> tuple[str, tuple[str, ...] | None]:
    """The name to run (or "auto") and the auto candidates, after any :func:`use_impl` block."""
    choice = None if torch.compiler.is_compiling() else _CHOICE.get()
    if impl != "auto" or choice is None:
        return impl, None
    kind, names = choice
    return (names[0], None) if kind == "pin" else ("auto", names)


def _candidates(restricted: tuple[str, ...] | None) -> list[str]:
    if restricted is not None:
        return list(restricted)
    return [n for n in list_impls() if get_impl(n).exact]


@contextmanager
def use_impl(impl: str | Sequence[str]) -> Iterator[None]:
    """Within the block, calls that leave ``impl="auto"`` run ``impl`` (a name pins it: it runs or
    refuses, never falls back) or choose only among a list of names, in that order.

    >>> import torch, attnkit
    >>> q = torch.randn(1, 1, 4, 8)
    >>> with attnkit.use_impl("reference"):
    ...     attnkit.explain_dispatch(q, q, q).chosen
    'reference'
    """
    if isinstance(impl, str):
        get_impl(impl)  # raises UnknownNameError on a typo
        choice = ("pin", (impl,))
    elif isinstance(impl, Sequence) and impl and all(isinstance(n, str) for n in impl):
        for n in impl:
            get_impl(n)
        choice = ("restrict", tuple(impl))
    else:
        raise AttnKitError(f"use_impl takes an implementation name or a non-empty list of names; got {impl!r}")
    token = _CHOICE.set(choice)
    try:
        yield
    finally:
        _CHOICE.reset(token)


def use_impls(names: Sequence[str]) -> contextlib.AbstractContextManager[None]:
    """Former name of ``use_impl(list)`` (restricts ``impl="auto"``); kept for one release."""
    if isinstance(names, str):
        raise AttnKitError(f"use_impls takes a list of names; got the string {names!r} "
                           f"(use attnkit.use_impl({names!r}) to pin one implementation)")
    return use_impl(list(names))


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
    if not isinstance(impl, str):
        raise AttnKitError(f"impl must be an implementation name (str); got {type(impl).__name__}")
    name, restricted = _effective(impl)
    if name != "auto":
        get_impl(name)  # UnknownNameError listing the valid names
    names = _candidates(restricted) if name == "auto" else [name]
    reasons: dict[str, list[str]] = {}
    chosen = None
    for n in names:
        spec = get_impl(n)
        why = auto_reasons(spec, call) if name == "auto" else not_supported_reasons(spec, call)
        reasons[n] = why
        if not why and chosen is None:
            chosen = n
    if name == "auto":
        for n in list_impls():  # say why approximate / excluded impls were not considered
            if n not in reasons:
                spec = get_impl(n)
                reasons[n] = ["approximate: only used when asked for by name" if not spec.exact
                              else "excluded by use_impl()"]
    problem = call.describe()
    if name != impl:
        problem += f" (impl {impl!r} inside use_impl: {name if name != 'auto' else list(restricted or ())})"
    return DispatchReport(chosen, reasons, problem)


_DECISIONS: OrderedDict[Hashable, str] = OrderedDict()
_DECISIONS_MAX = 512


def _mask_key(mask: Mask | None) -> Hashable | None:
    """A value key for a mask built from structured parts; None for masks holding tensors or
    functions (padding lengths, dense masks, predicates): those are compared by identity, and the
    memo would keep them alive."""
    if mask is None:
        return ()
    key = mask_key(mask)
    return None if _by_identity(key) else key


def _by_identity(key: Hashable) -> bool:
    if isinstance(key, tuple) and key[:1] == ("id",):
        return True
    return isinstance(key, tuple) and any(_by_identity(part) for part in key if isinstance(part, tuple))


def _signature(call: AttentionCall, impl: str) -> Hashable | None:
    """What a decision depends on, or None when the call cannot be keyed (then it is not memoised)."""
    mask_key = _mask_key(call.mask)
    if mask_key is None or call.score_mods or call.options:
        return None
    return (impl, _CHOICE.get(), registry_version(), call.q.shape, call.k.shape, call.v.shape, call.q.dtype,
            call.q.device, mask_key, call.score.kind, call.weight.kind, call.dropout_p > 0,
            call.generator is not None, call.requires_grad, call.return_weights, call.return_lse)


def select(call: AttentionCall, impl: str = "auto") -> ImplSpec:
    """The implementation that runs ``call``; raises ``UnsupportedError`` with every reason."""
    compiling = torch.compiler.is_compiling()
    key = None if compiling else _signature(call, impl)
    if key is not None and (hit := _DECISIONS.get(key)) is not None:
        _DECISIONS.move_to_end(key)
        return get_impl(hit)
    report = explain(call, impl)
    if report.chosen is None:
        what = "no implementation supports this call" if impl == "auto" else f"impl {impl!r} cannot run this call"
        raise UnsupportedError(f"{what}:\n{report}")
    if key is not None:
        _DECISIONS[key] = report.chosen
        if len(_DECISIONS) > _DECISIONS_MAX:
            _DECISIONS.popitem(last=False)
    return get_impl(report.chosen)
