"""``attention()``: validate, normalise, dispatch. The one call every implementation sits behind."""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .call import AttentionCall, ScoreArg, WeightArg, make_call
from .dispatch import DispatchReport, explain, select
from .errors import AttnKitError
from .masks import BlockMask, Mask
from .registry import AttnResult, ImplSpec
from .scores import ScoreMod

__all__ = ["attention", "explain_dispatch", "observe"]

Observer = Callable[[AttentionCall, str, Tensor, Tensor], None]
_OBSERVERS: contextvars.ContextVar[tuple[Observer, ...]] = contextvars.ContextVar("attnkit_observers", default=())


@contextmanager
def observe(callback: Observer) -> Iterator[None]:
    """Within the block, every :func:`attention` call also computes its weights and calls
    ``callback(call, impl_name, out, weights)``. Implementations that can return weights do so
    (blockwise ones by recomputation); for the others the weights are recomputed with the
    reference math. The output itself is unchanged. :mod:`attnkit.interpret` builds on this.
    """
    token = _OBSERVERS.set((*_OBSERVERS.get(), callback))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask | BlockMask | Tensor | None = None,
    *,
    score: ScoreArg = "scaled_dot",
    weight: WeightArg = "softmax",
    scale: float | None = None,
    bias: Tensor | None = None,
    score_mods: Sequence[ScoreMod] = (),
    dropout_p: float = 0.0,
    impl: str = "auto",
    return_weights: bool = False,
    return_lse: bool = False,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Attention in four steps: score every query-key pair, modify, weight, combine the values.

    Args:
        q: queries ``(B, H, T, D)``.
        k: keys ``(B, Hkv, S, D)``; ``H`` must be a multiple of ``Hkv`` (grouped-query attention).
        v: values ``(B, Hkv, S, Dv)``.
        mask: an :mod:`attnkit.masks` object, a bool tensor broadcastable to ``(B, H, T, S)``
            (True = attend) or a tile plan (``BlockMask``, e.g. ``masks.from_flex(...)``). A query
            with no allowed key gets zero weights and a zero output.
        score: ``"scaled_dot"`` (default), ``"dot"``, ``"cosine"``, or a
            :class:`~attnkit.scores.Score` such as ``scores.general(W)`` / ``scores.additive(...)``.
        weight: ``"softmax"`` (default), ``"sparsemax"``, ``"entmax15"``, ``"sigmoid"`` or a callable.
        scale: multiplies the scores; default ``1/sqrt(D)`` for scaled_dot, else 1.
        bias: float tensor broadcastable to ``(B, H, T, S)`` added to the scores.
        score_mods: further :class:`~attnkit.scores.ScoreMod` s (``alibi``, ``softcap``), in order.
        dropout_p: dropout on the weights (pass 0 in evaluation).
        impl: ``"auto"`` or a registered name (see :func:`attnkit.list_impls`). Inside
            ``with attnkit.use_impl(...)`` the block's choice replaces ``"auto"``.
        return_weights: also return the weights ``(B, H, T, S)``.
        return_lse: also return the log-sum-exp of each row's scores over its allowed keys,
            ``(B, H, T)`` in float32 (float64 for float64 inputs; ``-inf`` for a row with no allowed
            key); softmax weights only. With it, :func:`attnkit.merge_partials` combines attention
            over disjoint key sets exactly.
        options: implementation-specific options (e.g. block sizes), checked by name.
        generator: random generator for dropout and randomised implementations.

    Returns:
        ``out (B, H, T, Dv)``; ``(out, weights)`` with ``return_weights``; ``(out, lse)`` with
        ``return_lse``; ``(out, weights, lse)`` with both.

    Equivalent PyTorch code (softmax, no GQA)::

        s = (q @ k.transpose(-2, -1)) * scale + bias
        s = s.masked_fill(~mask, float("-inf"))
        out = torch.softmax(s, -1) @ v

    Example:
        >>> import torch, attnkit
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> attnkit.attention(q, k, v, attnkit.masks.causal()).shape
        torch.Size([1, 2, 5, 8])

    Shape legend: B batch, H query heads, Hkv key/value heads, T queries, S keys, D head dim,
    Dv value dim.
    """
    call = make_call(q, k, v, mask, score=score, weight=weight, scale=scale, bias=bias,
                     score_mods=score_mods, dropout_p=dropout_p, return_weights=return_weights,
                     return_lse=return_lse, options=options, generator=generator)
    spec = select(call, impl)
    observers = () if torch.compiler.is_compiling() else _OBSERVERS.get()
    if observers and not return_weights:  # observers see the weights of every call
        res = _run(spec, dataclasses.replace(call, return_weights=True) if spec.returns_weights else call)
        w = res.weights
        if w is None:
            with torch.no_grad():
                w = call.weights()
        res = AttnResult(res.out, None, res.lse)
    else:
        res = _run(spec, call)
        w = res.weights
    for cb in observers:
        cb(call, spec.name, res.out, w)
    if return_weights and return_lse:
        return res.out, res.weights, res.lse
    if return_weights:
        return res.out, res.weights
    if return_lse:
        return res.out, res.lse
    return res.out


def _run(spec: ImplSpec, call: AttentionCall) -> AttnResult:
    """Run ``spec`` on ``call`` and check it kept the contract (asked-for parts present)."""
    res = spec.fn(call)
    if not isinstance(res, AttnResult):
        raise TypeError(f"implementation {spec.name!r} returned {type(res).__name__}; expected attnkit.AttnResult")
    if call.return_weights and res.weights is None or call.return_lse and res.lse is None:
        raise TypeError(f"implementation {spec.name!r} did not return the weights / lse the call asked for")
    return res


def explain_dispatch(q: Tensor, k: Tensor, v: Tensor, mask: Mask | BlockMask | Tensor | None = None, *,
                     impl: str = "auto", **kwargs: Any) -> DispatchReport:
    """Which implementation :func:`attention` would run with these arguments, and why each other
    was not chosen. Takes the same arguments as :func:`attention`.

    >>> import torch, attnkit
    >>> q = torch.randn(1, 1, 4, 8)
    >>> attnkit.explain_dispatch(q, q, q, weight="sparsemax").chosen
    'reference'
    """
    accepted = set(inspect.signature(make_call).parameters) - {"q", "k", "v", "mask"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise AttnKitError(f"explain_dispatch got unknown keyword arguments {unknown}; it takes the keyword "
                           f"arguments of attention(): {', '.join(sorted(accepted | {'impl'}))}")
    return explain(make_call(q, k, v, mask, **kwargs), impl)
