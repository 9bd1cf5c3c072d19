"""The registry of attention implementations and what each one declares it supports.

Every implementation is a function ``fn(call: AttentionCall) -> AttnResult`` registered with an
:class:`ImplSpec`. It returns the output, the weights when ``call.return_weights`` and the per-row
log-sum-exp when ``call.return_lse`` (the contract in ``docs/architecture.md``). The dispatcher
(``dispatch.py``) reads the specs to decide
which implementation can run a call and to explain why the others cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .call import AttentionCall
from .errors import unknown_name

__all__ = ["AttnResult", "ImplSpec", "not_supported_reasons", "register_impl", "get_impl", "list_impls", "impl_table"]

ALL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class AttnResult(NamedTuple):
    """What an implementation returns (a named tuple: cheap to build on every call).

    ``out (B, H, T, Dv)``; ``weights (B, H, T, S)`` when the call asked for them, else None;
    ``lse (B, H, T)`` float32 (float64 for float64 inputs), the log-sum-exp of each query row's
    modified scores over its allowed keys (``-inf`` for a row with none), when the call asked for
    it, else None.
    """

    out: Tensor
    weights: Tensor | None = None
    lse: Tensor | None = None


ImplFn = Callable[[AttentionCall], AttnResult]


@dataclass(frozen=True)
class ImplSpec:
    """What an implementation is and what it supports (read by the dispatcher)."""

    name: str
    fn: ImplFn
    description: str
    scores: frozenset[str] | None = None  # score names it runs; None = any score
    weights: frozenset[str] | None = None  # weight names it runs; None = any weight function
    mask_types: tuple[type, ...] | None = None  # primitive mask classes it honours; None = any
    score_mods: Literal["any", "builtin", "additive", "none"] = "any"  # builtin: bias, alibi and softcap only
    dropout: bool = True
    grad: bool = True
    returns_weights: bool = True
    returns_lse: bool = False  # can return the per-row log-sum-exp (differentiable when grad is True)
    exact: bool = True  # False: an approximation, never chosen by impl="auto"
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    test_devices: frozenset[str] = frozenset()  # devices taken only in a test mode (Triton's interpreter
    # runs GPU kernels on CPU tensors); ``check`` says when that mode is off
    dtypes: frozenset[torch.dtype] = ALL_DTYPES
    max_head_dim: int | None = None
    options: frozenset[str] = frozenset()  # names accepted in attention(options=...)
    priority: int = 100  # impl="auto" tries lower numbers first
    check: Callable[[AttentionCall], list[str]] | None = None  # extra capability refusals
    auto_check: Callable[[AttentionCall], list[str]] | None = None  # cost model: why impl="auto" should
    # not pick it for this call (e.g. "dense sdpa is faster below S=1024"); a pinned impl ignores these
    available: Callable[[], str | None] | None = None  # returns why it cannot run here, or None

    def capabilities(self) -> dict[str, str]:
        """One row of the capability table."""
        fmt = lambda s: "any" if s is None else ", ".join(sorted(s))  # noqa: E731
        masks = "any" if self.mask_types is None else ", ".join(t.__name__ for t in self.mask_types)
        return {
            "impl": self.name,
            "exact": "yes" if self.exact else "approx",
            "scores": fmt(self.scores),
            "weights": fmt(self.weights),
            "masks": masks,
            "score mods": self.score_mods,
            "grad": "yes" if self.grad else "no",
            "return_weights": "yes" if self.returns_weights else "no",
            "return_lse": "yes" if self.returns_lse else "no",
            "dropout": "yes" if self.dropout else "no",
        }


_REGISTRY: dict[str, ImplSpec] = {}
_VERSION = [0]  # bumped on every registration (dispatch memoises decisions per version)


def register_impl(spec: ImplSpec) -> ImplSpec:
    """Add an implementation to the registry (a name may be registered once)."""
    if spec.name in _REGISTRY or spec.name == "auto":
        raise ValueError(f"implementation name {spec.name!r} is already taken")
    _REGISTRY[spec.name] = spec
    _VERSION[0] += 1
    return spec


def registry_version() -> tuple[int, int, int]:
    """A key that changes whenever the set of registered implementations changes (also when the
    registry is swapped, as tests do)."""
    return id(_REGISTRY), len(_REGISTRY), _VERSION[0]


def get_impl(name: str) -> ImplSpec:
    """The spec registered under ``name``; raises ``UnknownNameError`` listing the valid names."""
    if name not in _REGISTRY:
        raise unknown_name("impl", name, ["auto", *_REGISTRY])
    return _REGISTRY[name]


def list_impls() -> list[str]:
    """Registered implementation names, in ``impl="auto"`` preference order."""
    return [s.name for s in sorted(_REGISTRY.values(), key=lambda s: (s.priority, s.name))]


def impl_table() -> str:
    """A Markdown table of every implementation's capabilities (used in the README)."""
    rows = [get_impl(n).capabilities() for n in list_impls()]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def not_supported_reasons(spec: ImplSpec, call: AttentionCall) -> list[str]:
    """Every reason ``spec`` cannot run ``call`` (empty list: it can)."""
    reasons: list[str] = []
    if spec.available is not None and (why := spec.available()):
        return [why]
    if call.q.device.type not in spec.devices | spec.test_devices:
        reasons.append(f"device {call.q.device.type} not in {sorted(spec.devices)}")
    if call.q.dtype not in spec.dtypes:
        reasons.append(f"dtype {call.q.dtype} not supported")
    if spec.max_head_dim is not None and max(call.head_dim, call.v_dim) > spec.max_head_dim:
        reasons.append(f"head dim {max(call.head_dim, call.v_dim)} > {spec.max_head_dim}")
    for what, part, supported in (("score", call.score, spec.scores), ("weight", call.weight, spec.weights)):
        if supported is None or part.kind in supported:
            continue
        if part.builtin:
            reasons.append(f"{what} {part.name!r} not in {sorted(supported)}")
        else:
            reasons.append(f"{what} {part.name!r} is a user function (built-ins are known by identity, not by name)")
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
    if call.return_lse and not spec.returns_lse:
        reasons.append("cannot return the log-sum-exp (return_lse)")
    unknown = set(call.options) - spec.options
    if unknown:
        reasons.append(f"unknown options {sorted(unknown)} (accepts {sorted(spec.options) or 'none'})")
    if spec.check is not None:
        reasons += spec.check(call)
    return reasons
