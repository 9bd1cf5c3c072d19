"""Capturing attention weights from any model or module that calls :func:`attnkit.attention`.

Built on :func:`attnkit.observe`, so it also works for implementations that never materialise
the weights (they are recomputed with the exact math for the record; the model's output is
unchanged).

>>> import torch, attnkit
>>> from attnkit.interpret import capture_attention
>>> q = torch.randn(1, 2, 4, 8)
>>> with capture_attention() as cap:
...     _ = attnkit.attention(q, q, q)
>>> cap.stack().shape        # (L, B, H, T, S)
torch.Size([1, 1, 2, 4, 4])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import AttnKitError, ShapeError
from ..functional import observe
from ..registry import AttentionCall

__all__ = ["AttentionRecord", "AttentionCapture", "capture_attention"]


@dataclass(frozen=True)
class AttentionRecord:
    """One attention call: its position in call order, the implementation that ran it, the
    innermost module active at the time (when a model was given) and the weights ``(B, H, T, S)``."""

    index: int
    impl: str
    module: str | None
    weights: Tensor


@dataclass
class AttentionCapture:
    """Everything captured inside one :func:`capture_attention` block."""

    records: list[AttentionRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def weights(self) -> list[Tensor]:
        """The weights of every call, in call order (each ``(B, H, T, S)``)."""
        return [r.weights for r in self.records]

    def stack(self) -> Tensor:
        """All weights as one tensor ``(L, B, H, T, S)`` (calls must share a shape)."""
        if not self.records:
            raise AttnKitError("no attention call was captured; was attnkit.attention called inside the block?")
        shapes = {tuple(w.shape) for w in self.weights}
        if len(shapes) > 1:
            raise ShapeError(f"captured weights differ in shape {sorted(shapes)}; use .weights instead of .stack()")
        return torch.stack(self.weights)


def _module_tracker(model: nn.Module, stack: list[str]) -> Callable[[], None]:
    """Forward hooks keeping ``stack`` = the qualified names of the modules currently running."""
    def leave(module: nn.Module, args: object, output: object) -> None:
        stack.pop()  # returns None, so the module output is untouched

    handles = []
    for name, mod in model.named_modules():
        def enter(module: nn.Module, args: object, name: str = name) -> None:
            stack.append(name)

        handles.append(mod.register_forward_pre_hook(enter))
        handles.append(mod.register_forward_hook(leave))

    def remove() -> None:
        for h in handles:
            h.remove()

    return remove


@contextmanager
def capture_attention(model: nn.Module | None = None, *, to_cpu: bool = True,
                      where: Callable[[AttentionCall, str], bool] | None = None) -> Iterator[AttentionCapture]:
    """Record the weights of every :func:`attnkit.attention` call made inside the block.

    Args:
        model: optional; when given, each record names the innermost submodule that made the call
            (e.g. ``"bert.layers.3.attn"``).
        to_cpu: move the (detached) weights to the CPU as they arrive.
        where: optional filter ``where(call, impl_name) -> bool``; calls it rejects are not kept.
    """
    cap = AttentionCapture()
    active: list[str] = []

    def record(call: AttentionCall, impl: str, out: Tensor, w: Tensor) -> None:
        if where is not None and not where(call, impl):
            return
        w = w.detach()
        cap.records.append(AttentionRecord(len(cap.records), impl, active[-1] if active else None,
                                           w.cpu() if to_cpu else w))

    with ExitStack() as stack:
        if model is not None:
            stack.callback(_module_tracker(model, active))
        stack.enter_context(observe(record))
        yield cap
