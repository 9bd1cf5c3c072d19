"""``attention()``: validate, normalise, dispatch. The one call every implementation sits behind."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .call import AttentionCall, ScoreArg, WeightArg, make_call
from .dispatch import DispatchReport, explain, select
from .errors import AttnKitError
from .masks import Mask
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
    mask: Mask | Tensor | None = None,
    *,
    score: ScoreArg = "scaled_dot",
    weight: WeightArg = "softmax",
    scale: float | None = None,
    bias: Tensor | None = None,
    score_mods: Sequence[ScoreMod] = (),
    dropout_p: float = 0.0,
    impl: str = "auto",
    return_weights: bool = False,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention in four steps: score every query-key pair, modify, weight, combine the values.

    Args:
        q: queries ``(B, H, T, D)``.
        k: keys ``(B, Hkv, S, D)``; ``H`` must be a multiple of ``Hkv`` (grouped-query attention).
        v: values ``(B, Hkv, S, Dv)``.
        mask: an :mod:`attnkit.masks` object or a bool tensor broadcastable to ``(B, H, T, S)``;
            True = attend. A query with no allowed key gets zero weights and a zero output.
        score: ``"scaled_dot"`` (default), ``"dot"``, ``"cosine"``, or a
            :class:`~attnkit.scores.Score` such as ``scores.general(W)`` / ``scores.additive(...)``.
        weight: ``"softmax"`` (default), ``"sparsemax"``, ``"entmax15"``, ``"sigmoid"`` or a callable.
        scale: multiplies the scores; default ``1/sqrt(D)`` for scaled_dot, else 1.
        bias: float tensor broadcastable to ``(B, H, T, S)`` added to the scores.
        score_mods: further :class:`~attnkit.scores.ScoreMod` s (``alibi``, ``softcap``), in order.
        dropout_p: dropout on the weights (pass 0 in evaluation).
        impl: ``"auto"`` or a registered name (see :func:`attnkit.list_impls`).
        return_weights: also return the weights ``(B, H, T, S)``.
        options: implementation-specific options (e.g. block sizes), checked by name.
        generator: random generator for dropout and randomised implementations.

    Returns:
        ``out (B, H, T, Dv)``, or ``(out, weights)`` when ``return_weights``.

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
                     options=options, generator=generator)
    if not isinstance(impl, str):
        raise AttnKitError(f"impl must be a name (str); got {type(impl).__name__}")
    spec = select(call, impl)
    observers = _OBSERVERS.get()
    if not observers:
        return spec.fn(call)
    if return_weights:
        out, w = spec.fn(call)
    elif spec.returns_weights:
        out, w = spec.fn(dataclasses.replace(call, return_weights=True))
    else:
        out = spec.fn(call)
        with torch.no_grad():
            w = call.weights()
    for cb in observers:
        cb(call, spec.name, out, w)
    return (out, w) if return_weights else out


def explain_dispatch(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None, *,
                     impl: str = "auto", **kwargs: Any) -> DispatchReport:
    """Which implementation :func:`attention` would run with these arguments, and why each other
    was not chosen. Takes the same arguments as :func:`attention`.

    >>> import torch, attnkit
    >>> q = torch.randn(1, 1, 4, 8)
    >>> attnkit.explain_dispatch(q, q, q, weight="sparsemax").chosen
    'reference'
    """
    return explain(make_call(q, k, v, mask, **kwargs), impl)
