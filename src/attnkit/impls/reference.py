"""``reference``: the naive, materialised implementation. The oracle every other one is tested
against, and the specification of what ``attention()`` computes. Supports every score, weight,
mask, score modifier and dropout; memory O(B * H * T * S)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..call import AttentionCall
from ..registry import ImplSpec, register_impl
from ..shapes import repeat_kv

__all__ = ["reference"]


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
    s = call.scores(q, k)  # (B, H, T, S)
    # 3. weight: normalise over the allowed keys
    mask = call.dense_mask(s.device)
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
