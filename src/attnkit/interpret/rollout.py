"""Attention rollout and attention flow (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
Transformers").

Both treat the layers as a graph whose edge weights are the head-averaged attention plus the
residual connection, ``Â_l = 0.5 * A_l + 0.5 * I`` (rows renormalised):

* **rollout** multiplies the layers: ``R = Â_L ... Â_2 Â_1`` (rows sum to 1);
* **flow** is the maximum flow from input token ``j`` (layer 0) to token ``i`` in the last layer
  through the layered graph with capacities ``Â_l[i, k]``.

Shapes: ``attentions`` is ``(L, T, T)`` per layer (or ``(L, H, T, T)`` averaged over heads here).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import AttnKitError, ShapeError

__all__ = ["residual_attention", "attention_rollout", "attention_flow", "max_flow"]


def _as_layers(attentions: Tensor | Sequence[Tensor], head_fusion: str = "mean") -> Tensor:
    """``(L, H, T, T)`` / ``(L, T, T)`` / list of ``(H, T, T)`` -> ``(L, T, T)`` float64."""
    a = torch.stack(list(attentions)) if not isinstance(attentions, Tensor) else attentions
    if a.dim() == 4:
        if head_fusion == "mean":
            a = a.mean(1)
        elif head_fusion == "max":
            a = a.amax(1)
        elif head_fusion == "min":
            a = a.amin(1)
        else:
            raise AttnKitError(f"head_fusion must be 'mean', 'max' or 'min'; got {head_fusion!r}")
    if a.dim() != 3 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"attentions must be (L, H, T, T) or (L, T, T) self-attention weights; got shape "
                         f"{tuple(a.shape)}")
    return a.detach().to(torch.float64)


def residual_attention(attentions: Tensor | Sequence[Tensor], *, head_fusion: str = "mean",
                       residual: bool = True) -> Tensor:
    """``Â_l`` per layer ``(L, T, T)``: heads fused, ``0.5 A + 0.5 I`` when ``residual``, rows renormalised."""
    a = _as_layers(attentions, head_fusion)  # (L, T, T)
    if residual:
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


def attention_rollout(attentions: Tensor | Sequence[Tensor], *, head_fusion: str = "mean",
                      residual: bool = True) -> Tensor:
    """Rollout ``(T, T)``: row ``i`` says how much last-layer token ``i`` draws from each input token.

    >>> a = torch.full((2, 1, 3, 3), 1 / 3)
    >>> [round(x, 6) for x in attention_rollout(a).sum(-1).tolist()]
    [1.0, 1.0, 1.0]
    """
    layers = residual_attention(attentions, head_fusion=head_fusion, residual=residual)  # (L, T, T)
    out = torch.eye(layers.shape[-1], dtype=layers.dtype)
    for a in layers:
        out = a @ out  # (T, T): later layers on the left
    return out


def max_flow(capacity: list[dict[int, float]], source: int, sink: int) -> float:
    """Maximum flow value from ``source`` to ``sink`` (Edmonds-Karp). ``capacity[u][v]`` is the
    capacity of edge ``u -> v``; the graph is not modified."""
    residual = [dict(edges) for edges in capacity]
    for u, edges in enumerate(capacity):
        for v in edges:
            residual[v].setdefault(u, 0.0)
    total = 0.0
    while True:
        parent = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, c in residual[u].items():
                if c > 1e-12 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return total
        path_cap, v = float("inf"), sink
        while v != source:
            u = parent[v]
            path_cap = min(path_cap, residual[u][v])
            v = u
        v = sink
        while v != source:
            u = parent[v]
            residual[u][v] -= path_cap
            residual[v][u] += path_cap
            v = u
        total += path_cap


def _layered_graph(layers: Tensor) -> list[dict[int, float]]:
    """Node ``l * T + t`` is token ``t`` after layer ``l`` (``l = 0``: the input); edges go from
    ``(l, j)`` to ``(l + 1, i)`` with capacity ``Â_l[i, j]``."""
    n_layers, t, _ = layers.shape
    cap: list[dict[int, float]] = [{} for _ in range((n_layers + 1) * t)]
    for ell in range(n_layers):
        a = layers[ell].tolist()
        for i in range(t):
            for j in range(t):
                if a[i][j] > 0:
                    cap[ell * t + j][(ell + 1) * t + i] = a[i][j]
    return cap


def attention_flow(attentions: Tensor | Sequence[Tensor], *, head_fusion: str = "mean", residual: bool = True,
                   progress: bool | None = None) -> Tensor:
    """Attention flow ``(T, T)``: entry ``[i, j]`` is the max flow from input token ``j`` to
    last-layer token ``i``. Costs ``T^2`` max-flow problems on ``(L + 1) T`` nodes (a progress bar
    shows by default for ``T > 24``)."""
    from tqdm.auto import tqdm

    layers = residual_attention(attentions, head_fusion=head_fusion, residual=residual)  # (L, T, T)
    n_layers, t, _ = layers.shape
    cap = _layered_graph(layers)
    out = torch.zeros(t, t, dtype=torch.float64)
    show = t > 24 if progress is None else progress
    for j in tqdm(range(t), desc="attention flow", unit="token", disable=not show):
        for i in range(t):
            out[i, j] = max_flow(cap, j, n_layers * t + i)
    return out
