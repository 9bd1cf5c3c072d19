"""``sdpa``: PyTorch's fused ``scaled_dot_product_attention`` behind attnkit's call.

Runs scaled_dot / dot / cosine scores with softmax weights. Masks other than a plain causal mask
(which uses ``is_causal``) and additive score modifiers (bias, ALiBi) are materialised as one
dense ``(B, H, T, S)`` mask or bias, so memory is O(T * S) for those. Rows with no allowed key
are forced to zero output (and zero gradient), whatever the backend does with them.

SDPA's kernels never expose the weights: with ``return_weights=True`` the output still comes from
the kernel and the weights ``(B, H, T, S)`` are recomputed with the reference math (the
materialisation the caller asked for), so a module that asks for weights by default, as
``torch.nn.MultiheadAttention`` does, runs here unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from ..registry import AttnResult, ImplSpec, register_impl
from ..shapes import repeat_kv
from ._common import prepared_qk, sdpa_mask_kind

__all__ = ["sdpa"]


def _attn_bias(call: AttentionCall) -> tuple[Tensor | None, Tensor | None]:
    """The SDPA ``attn_mask`` (bool or float) and the rows-alive flags ``(B|1, H|1, T, 1)``."""
    kind = sdpa_mask_kind(call)
    if kind == "none" and not call.score_mods:
        return None, None
    dense = call.mask.dense4(call.lq, call.lk, device=call.q.device) if kind != "none" else None
    alive = dense.any(-1, keepdim=True) if dense is not None else None
    if alive is not None:
        dense = dense | ~alive  # let dead rows attend anywhere; their output is zeroed after
    if not call.score_mods:
        return dense, alive
    bias = sum(m.as_bias(call.batch, call.heads, call.lq, call.lk, dtype=call.q.dtype, device=call.q.device)
               for m in call.score_mods).to(call.q.dtype)  # a user's mod may compute in another dtype
    if dense is not None:
        bias = bias.masked_fill(~dense, -math.inf)
    return bias, alive


def sdpa(call: AttentionCall) -> AttnResult:
    """``torch.nn.functional.scaled_dot_product_attention`` with attnkit's semantics.

    Equivalent PyTorch code::

        F.scaled_dot_product_attention(q, repeat_kv(k), repeat_kv(v),
                                       attn_mask=mask.dense(T, S), scale=scale)
    """
    out = _sdpa_out(call)
    if not call.return_weights:
        return AttnResult(out)
    return AttnResult(out, call.weights().to(call.q.dtype))  # recomputed: the kernel keeps its own


def _sdpa_out(call: AttentionCall) -> Tensor:
    """The output ``(B, H, T, Dv)`` from the fused kernel."""
    q, k, scale = prepared_qk(call)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(call.v, n_rep)
    kind = sdpa_mask_kind(call)
    if kind == "causal" and not call.score_mods:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=call.dropout_p, is_causal=True, scale=scale)
    if kind == "none" and not call.score_mods:  # the decode step and unmasked calls: nothing to build
        return F.scaled_dot_product_attention(q, k, v, dropout_p=call.dropout_p, scale=scale)
    attn_mask, alive = _attn_bias(call)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=call.dropout_p, scale=scale)
    if alive is not None:
        out = torch.where(alive, out, torch.zeros((), dtype=out.dtype))
    return out


def _cost(call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` should leave a call to another implementation."""
    if call.return_weights:
        return ["return_weights=True: the weights would be recomputed with the reference math after the "
                "kernel; the reference computes output and weights in one pass"]
    return []


def _check(call: AttentionCall) -> list[str]:
    if call.dropout_p > 0 and call.generator is not None:
        return ["dropout draws from the global RNG (no generator=)"]
    return []


register_impl(ImplSpec(
    name="sdpa",
    fn=sdpa,
    description="torch scaled_dot_product_attention (fused; masks/bias materialised densely)",
    scores=frozenset({"scaled_dot", "dot", "cosine"}),
    weights=frozenset({"softmax"}),
    score_mods="additive",
    priority=10,
    check=_check,
    auto_check=_cost,
))
