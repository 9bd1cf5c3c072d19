"""``reference``: the naive, materialised implementation. The oracle every other one is tested
against, and the specification of what ``attention()`` computes. Supports every score, weight,
mask, score modifier and dropout; memory O(B * H * T * S)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import AttentionCall, ImplSpec, register_impl
from ..scores import apply_mods
from ..shapes import repeat_kv

__all__ = ["reference", "score_matrix"]


def score_matrix(call: AttentionCall, q: Tensor | None = None, k: Tensor | None = None) -> Tensor:
    """Steps 1-2: modified scores ``(B, H, T, S)`` of ``call`` (GQA heads expanded)."""
    q = call.q if q is None else q
    k = repeat_kv(call.k if k is None else k, call.heads // call.kv_heads)
    if call.options.get("reorder_ops", False) and call.score.name in ("dot", "scaled_dot"):
        s = call.score(q * call.scale, k, 1.0)  # scale q first (as fused kernels do)
    else:
        s = call.score(q, k, call.scale)  # (B, H, T, S)
    if call.score_mods:
        dev = s.device
        b = torch.arange(call.batch, device=dev).view(-1, 1, 1, 1)
        h = torch.arange(call.heads, device=dev).view(1, -1, 1, 1)
        i = torch.arange(call.lq, device=dev).view(1, 1, -1, 1)
        j = torch.arange(call.lk, device=dev).view(1, 1, 1, -1)
        s = apply_mods(s, call.score_mods, b, h, i, j, call.lq, call.lk)
    return s


def reference(call: AttentionCall) -> Tensor | tuple[Tensor, Tensor]:
    """Materialised attention. Options: ``upcast`` (compute in float32 for half inputs),
    ``reorder_ops`` (scale q before the matmul).

    Equivalent PyTorch code::

        s = mods(score(q, repeat_kv(k)) * scale)
        w = dropout(weight(s, mask.dense(T, S)))
        out = w @ repeat_kv(v)
    """
    q, k, v = call.q, call.k, call.v
    if call.options.get("upcast", False) and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    # 1-2. score every query-key pair and apply the score modifiers
    s = score_matrix(call, q, k)  # (B, H, T, S)
    # 3. weight: normalise over the allowed keys
    mask = call.mask.dense4(call.lq, call.lk, device=s.device) if call.mask is not None else None
    w = call.weight(s, mask)  # (B, H, T, S)
    if call.dropout_p > 0:
        keep = torch.rand(w.shape, generator=call.generator, device=w.device, dtype=w.dtype) >= call.dropout_p
        w_used = w * keep / (1 - call.dropout_p)
    else:
        w_used = w
    # 4. combine the values
    out = w_used @ repeat_kv(v, call.heads // call.kv_heads)  # (B, H, T, Dv)
    out = out.to(call.q.dtype)
    return (out, w.to(call.q.dtype)) if call.return_weights else out


register_impl(ImplSpec(
    name="reference",
    fn=reference,
    description="naive materialised scores; the oracle; supports everything",
    options=frozenset({"upcast", "reorder_ops"}),
    priority=1000,
))
