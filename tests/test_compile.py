"""``torch.compile(fullgraph=True)`` over :func:`attnkit.attention`: the implementations whose code
allows it compile into one graph (docs/numerics.md lists which), and give the eager result."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks

CASES = [
    # (impl, mask, T): sdpa and reference, with no mask, causal, and the one-token decode step
    ("sdpa", None, 16),
    ("sdpa", "causal", 16),
    ("reference", "causal", 16),
    ("auto", "causal", 1),  # decode: one query over a cache of keys, chosen by dispatch at trace time
]


@pytest.mark.parametrize("impl, mask_name, t", CASES)
def test_fullgraph_compile_matches_eager(impl, mask_name, t):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, t, 32, generator=g)
    k, v = torch.randn(1, 4, 64, 32, generator=g), torch.randn(1, 4, 64, 32, generator=g)
    if t == 16:
        k, v = k[:, :, :16], v[:, :, :16]

    def step(q, k, v):
        return attnkit.attention(q, k, v, masks.causal() if mask_name else None, impl=impl)

    compiled = torch.compile(step, fullgraph=True, backend="eager")  # graph capture is what is tested
    torch.testing.assert_close(compiled(q, k, v), step(q, k, v))


def test_use_impl_blocks_are_read_eagerly_not_inside_a_graph():
    """A use_impl block does not break a graph: inside compiled code impl="auto" is decided at trace
    time from the call itself (documented), so the compiled graph equals the eager auto result."""
    torch._dynamo.reset()
    q = torch.randn(1, 2, 8, 16)
    compiled = torch.compile(lambda q: attnkit.attention(q, q, q), fullgraph=True, backend="eager")
    with attnkit.use_impl("reference"):
        torch.testing.assert_close(compiled(q), attnkit.attention(q, q, q), atol=1e-6, rtol=1e-5)
