"""``reference``: the naive, materialised implementation. The oracle every other one is tested
against, and the specification of what ``attention()`` computes. Supports every score, weight,
mask, score modifier and dropout; memory O(B * H * T * S)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..call import AttentionCall
from ..registry import AttnResult, ImplSpec, register_impl
from ..shapes import repeat_kv

__all__ = ["reference", "row_lse"]


def reference(call: AttentionCall) -> AttnResult:
    """Materialised attention. For half inputs the scores, weights and sums are computed in
    float32 (option ``upcast``, default True; ``upcast=False`` stays in the input precision, the
    low-precision baseline of the tests' error-ratio rule). Option ``reorder_ops``: scale q before
    the matmul.

    Equivalent PyTorch code::

        s = mods(score(q, repeat_kv(k)) * scale)
        w = dropout(weight(s, mask.dense(T, S)))
        out = w @ repeat_kv(v)
    """
    q, k, v = call.q, call.k, call.v
    if call.options.get("upcast", True) and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    # 1-2. score every query-key pair and apply the score modifiers
    s = call.scores(q, k)  # (B, H, T, S)
    # 3. weight: normalise over the allowed keys
    mask = call.dense_mask(s.device)  # (Bm, Hm, T, S) or None
    w = call.weight(s, mask)  # (B, H, T, S)
    if call.dropout_p > 0:
        keep = torch.rand(w.shape, generator=call.generator, device=w.device, dtype=w.dtype) >= call.dropout_p
        w_used = w * keep / (1 - call.dropout_p)
    else:
        w_used = w
    # 4. combine the values
    out = (w_used @ repeat_kv(v, call.heads // call.kv_heads)).to(call.q.dtype)  # (B, H, T, Dv)
    return AttnResult(out,
                      w.to(call.q.dtype) if call.return_weights else None,
                      row_lse(s, mask) if call.return_lse else None)


def row_lse(s: Tensor, mask: Tensor | None) -> Tensor:
    """Log-sum-exp ``(B, H, T)`` of each row of ``s (B, H, T, S)`` over its allowed keys, in float32
    (float64 for float64 scores); ``-inf`` for a row with none, with zero gradient there."""
    s = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    alive = (s != -math.inf).any(-1, keepdim=True)  # (B, H, T, 1)
    lse = torch.logsumexp(torch.where(alive, s, 0.0), -1)  # dead rows: finite stand-in, no NaN gradient
    return torch.where(alive.squeeze(-1), lse, -math.inf)


register_impl(ImplSpec(
    name="reference",
    fn=reference,
    description="naive materialised scores; the oracle; supports everything",
    returns_lse=True,
    options=frozenset({"upcast", "reorder_ops"}),
    priority=1000,
))
