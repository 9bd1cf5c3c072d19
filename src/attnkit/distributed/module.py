"""Run attnkit's modules context-parallel without changing them.

:func:`context_parallel` is a context manager. Inside it every :func:`attnkit.attention` call
that leaves ``impl="auto"`` (as :class:`attnkit.nn.MultiHeadAttention` and the transformer
layers do) runs on the implementation ``"context_parallel"``: the call's q, k, v are this rank's
shards, and the ring (or the all-to-all, or both) computes attention over the whole sequence.
Rotary position embeddings of the given model are moved to global positions for the block.

The implementation is registered the first time the context is entered; outside the context it
declares itself unavailable, so ``impl="auto"`` never picks it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from ..call import AttentionCall
from ..dispatch import use_impl
from ..errors import AttnKitError, UnsupportedError
from ..masks import Mask
from ..registry import AttnResult, ImplSpec, list_impls, register_impl
from . import _group
from .layout import LayoutName, ShardLayout
from .ring import ring_attention
from .ulysses import hybrid_attention, hybrid_layout, ulysses_attention

__all__ = ["context_parallel", "IMPL_NAME"]

IMPL_NAME = "context_parallel"
Mode = Literal["ring", "ulysses", "hybrid"]


@dataclass(frozen=True)
class _Setting:
    mode: Mode
    group: Any
    ring_group: Any
    head_group: Any
    layout: LayoutName | ShardLayout
    mask: Mask | None
    impl: str


_ACTIVE: contextvars.ContextVar[_Setting | None] = contextvars.ContextVar("attnkit_context_parallel", default=None)


def _unavailable() -> str | None:
    return None if _ACTIVE.get() is not None else "runs only inside attnkit.distributed.context_parallel(...)"


def _check(call: AttentionCall) -> list[str]:
    reasons = []
    if call.return_weights:
        reasons.append("weights of a sharded sequence are not gathered (need_weights=False)")
    if call.lq != call.lk:
        reasons.append(f"self-attention over one sharded sequence only (got T_r={call.lq}, S_r={call.lk})")
    return reasons


def _run(call: AttentionCall) -> AttnResult:
    s = _ACTIVE.get()
    assert s is not None
    mask = call.mask if s.mask is None else (s.mask if call.mask is None else call.mask & s.mask)
    kw: dict[str, Any] = dict(score=call.score.kind, scale=call.scale, return_lse=True)
    with use_impl([n for n in list_impls() if n != IMPL_NAME]):  # local steps choose among the others
        return _run_mode(s, call, mask, kw)


def _run_mode(s: _Setting, call: AttentionCall, mask: Mask | None, kw: dict[str, Any]) -> AttnResult:
    if s.mode == "ring":
        out, lse = ring_attention(call.q, call.k, call.v, mask, group=s.group, layout=s.layout, impl=s.impl, **kw)
    elif s.mode == "ulysses":
        out, lse = ulysses_attention(call.q, call.k, call.v, mask, group=s.group, layout=s.layout,
                                     impl=s.impl, **kw)
    else:
        out, lse = hybrid_attention(call.q, call.k, call.v, mask, ring_group=s.ring_group, head_group=s.head_group,
                                    layout=s.layout, impl=s.impl, **kw)
    return AttnResult(out, None, lse if call.return_lse else None)


def _register() -> None:
    if IMPL_NAME in list_impls():
        return
    register_impl(ImplSpec(
        name=IMPL_NAME, fn=_run, description="ring / all-to-all attention over the ranks of a process group",
        scores=frozenset({"scaled_dot", "dot", "cosine"}), weights=frozenset({"softmax"}), score_mods="none",
        dropout=False, returns_weights=False, returns_lse=True, exact=True, priority=2000, check=_check,
        available=_unavailable,
    ))


class _GlobalRope(nn.Module):
    """A rotary embedding that rotates this rank's local positions ``0 .. T_r - 1`` to their
    global positions."""

    def __init__(self, inner: nn.Module, positions: Tensor):
        super().__init__()
        self.inner, self.dim = inner, inner.dim
        self.register_buffer("global_positions", positions, persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        if int(positions.max()) >= len(self.global_positions):
            raise AttnKitError("context_parallel covers one forward pass over the sharded sequence; "
                               "a KV cache (positions past the shard) is not supported")
        return self.inner(x, self.global_positions.to(positions.device)[positions])


@contextmanager
def context_parallel(model: nn.Module | None = None, *, mode: Mode = "ring", group: Any = None,
                     layout: LayoutName | ShardLayout = "zigzag", length: int | None = None,
                     mask: Mask | None = None, ring_group: Any = None, head_group: Any = None,
                     impl: str = "blockwise") -> Iterator[None]:
    """Within the block, attention calls with ``impl="auto"`` run across the ranks.

    Args:
        model: a module whose :class:`~attnkit.nn.MultiHeadAttention` submodules use RoPE:
            their rotations move to the global positions of this rank's shard (needs ``length``).
            Modules with a fixed ``impl`` other than ``"auto"`` or with ALiBi are refused.
        mode: ``"ring"`` (any heads, any mask), ``"ulysses"`` (heads divisible by the ranks) or
            ``"hybrid"`` (``ring_group`` x ``head_group``, see :func:`make_2d_groups`).
        group: the process group of ``"ring"`` / ``"ulysses"`` (None: the default group).
        layout: how the sequence is sharded (``"zigzag"``, ``"contiguous"`` or a layout); for
            ``"hybrid"`` the ring's layout (each ring shard is split over the head group).
        length: the global sequence length (for the rotary positions).
        mask: a further mask of the GLOBAL sequence combined with every call's own (e.g.
            ``masks.padding(lengths)``: key padding cannot come from a shard's own mask tensor).
        impl: the implementation of each local step.

    Example (every rank, after ``init_process_group``)::

        ids_r = shard(ids, "zigzag", dim=1)                  # (B, T_r)
        with context_parallel(lm, length=ids.shape[1]):
            logits_r = lm(ids_r)                             # (B, T_r, V): this rank's positions
    """
    if mode not in ("ring", "ulysses", "hybrid"):
        raise AttnKitError(f"mode must be 'ring', 'ulysses' or 'hybrid'; got {mode!r}")
    if mode == "hybrid" and (ring_group is None or head_group is None):
        raise AttnKitError("mode='hybrid' needs ring_group and head_group (attnkit.distributed.make_2d_groups)")
    if mask is not None and not isinstance(mask, Mask):
        raise AttnKitError(f"mask must be an attnkit Mask of the global sequence; got {type(mask).__name__}")
    _register()
    setting = _Setting(mode, group, ring_group, head_group, layout, mask, impl)
    with ExitStack() as stack:
        if model is not None:
            _route_modules(model, setting, length, stack)
        token = _ACTIVE.set(setting)
        stack.callback(_ACTIVE.reset, token)
        stack.enter_context(use_impl(IMPL_NAME))
        yield


def _route_modules(model: nn.Module, s: _Setting, length: int | None, stack: ExitStack) -> None:
    if not isinstance(model, nn.Module):
        raise AttnKitError(f"model must be an nn.Module; got {type(model).__name__}")
    # attnkit.nn sits above this package, so its attention modules are recognised by what they
    # have (MultiHeadAttention's attend / rope / alibi / impl), not imported
    mhas = [m for m in model.modules() if all(hasattr(m, a) for a in ("attend", "rope", "alibi", "impl"))]
    for mha in mhas:
        if mha.impl != "auto":
            raise UnsupportedError(f"{type(mha).__name__} has impl={mha.impl!r}; a fixed implementation would not "
                                   "run context-parallel (build it with impl='auto')")
        if mha.alibi:
            raise UnsupportedError("ALiBi biases depend on global positions; not supported context-parallel")
    if not any(m.rope is not None for m in mhas):
        return
    if length is None:
        raise AttnKitError("context_parallel(model, ...) needs length= (the global sequence length) to rotate "
                           "RoPE to global positions")
    positions = _positions(s, length)
    for mha in mhas:
        if mha.rope is not None:
            object.__setattr__(mha, "rope", _GlobalRope(mha.rope, positions))  # shadows the submodule
            stack.callback(mha.__dict__.pop, "rope")


def _positions(s: _Setting, length: int) -> Tensor:
    if s.mode == "hybrid":
        rg, hg = _group.resolve(s.ring_group), _group.resolve(s.head_group)
        lay = hybrid_layout(length, rg.size, hg.size, s.layout)
        return lay.positions(rg.rank * hg.size + hg.rank)
    g = _group.resolve(s.group)
    return ShardLayout.build(s.layout, length, g.size).positions(g.rank)

