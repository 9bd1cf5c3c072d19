"""``blockwise``: exact attention streamed over key blocks (FlashAttention-2 on CPU, in PyTorch).

The score matrix is never materialised. Queries are processed ``block_q`` rows at a time; for
each query block the keys are visited in chunks with a running row maximum ``m``, running sum
``l`` and output accumulator (the *online softmax*). Only the output and the per-row
log-sum-exp ``lse = m + log l`` are saved; the backward pass recomputes every score tile from
``q``, ``k`` and ``lse`` (FlashAttention-2: ``dV += P^T dO``, ``dS = P * (dO V^T - delta)`` with
``delta = rowsum(dO * O) - dlse``, ``dQ += dS K``, ``dK += dS^T Q``), so memory is
``O(B * H * ((T + S) * D + block_q * chunk_k))``.

Masks are honoured through the shared tile plan (:func:`attnkit.masks.plan.tile_plan`): empty
tiles are skipped, runs of full tiles are computed without a mask, partial tiles get the dense
sub-mask of just that tile range. Score modifiers are applied tile by tile with the tile's
indices; non-additive ones (soft-capping) are differentiated through with autograd on the tile.
Scores, sums and accumulators are float32 (float64 for float64 inputs), whatever the inputs;
bfloat16 inputs keep bfloat16 for the ``p @ v`` and gradient products (:func:`product_dtype`).

Weights: ``softmax`` (online) and ``sigmoid`` (elementwise, no running statistics).
Scores: ``scaled_dot``, ``dot`` and ``cosine`` (``q`` and ``k`` are normalised first).

Layout: :mod:`.plan` (the schedule over the shared tile plan), :mod:`.tiles` (one score tile,
forward and backward, the autograd function), this module (the entry point, which hands large
calls to the native kernel, the cost model and registration).

Shape legend: B batch, H query heads, Hkv key/value heads, T queries, S keys, D head dim,
Dv value dim; ``bq`` rows of a query block, ``ck`` keys of a chunk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...call import AttentionCall
from ...kernels.tiles import kernel_form, kernel_usable
from ...masks.base import DEFAULT_BLOCK
from ...registry import AttnResult, ImplSpec, register_impl
from ...scores import apply_mods
from ...shapes import repeat_kv
from .._common import (
    Option,
    compute_dtype,
    holds_grad_tensor,
    on_kernel,
    prepared_qk,
    read_options,
    sdpa_can_run,
    sdpa_runs_fused,
)
from .plan import DEFAULT_CHUNK_K, DEFAULT_ROWS, BlockPlan, plan_blocks
from .tiles import _BlockwiseAttention, _sigmoid_weights, product_dtype

__all__ = ["blockwise", "BlockPlan", "plan_blocks", "product_dtype", "cost_reasons", "COST", "OPTIONS", "DEFAULT_ROWS",
           "DEFAULT_CHUNK_K"]


OPTIONS = {
    "block_q": Option(int, DEFAULT_ROWS, "query rows per step", minimum=1),
    "block_k": Option(int, DEFAULT_BLOCK, "keys per tile of the mask's tile plan", minimum=1),
    "chunk_k": Option(int, DEFAULT_CHUNK_K, "most keys one matmul covers", minimum=1),
    "kernel": Option(str, "auto", "who computes the tiles: 'auto' (the native C++ kernel where it is available, "
                     "for softmax calls without dropout or weights whose score modifiers are all built-in bias / "
                     "alibi / softcap, T x S >= 2**20), 'torch' (always PyTorch)", choices=("auto", "torch")),
}


# ----------------------------------------------------------------------------------------------
# the implementation behind attention()
# ----------------------------------------------------------------------------------------------


def _weights(call: AttentionCall, qs: Tensor, k: Tensor, lse: Tensor) -> Tensor:
    """The attention weights ``(B, H, T, S)`` recomputed from the scores and the saved lse
    (differentiable: the lse carries its own gradient back through the blockwise backward)."""
    s = torch.matmul(qs, k.transpose(-2, -1))  # (B, H, T, S) in the compute dtype
    if call.score_mods:
        s = apply_mods(s, call.score_mods, *call.index_grid(s.device), call.lq, call.lk)
    allowed = s != -math.inf
    if call.mask is not None:
        allowed = allowed & call.dense_mask(s.device)
    if call.weight.kind == "sigmoid":
        w = _sigmoid_weights(s, call.lk)
    else:
        w = torch.exp(s - lse.masked_fill(lse == -math.inf, math.inf))
    return torch.where(allowed, w, 0.0).to(call.q.dtype)


def blockwise(call: AttentionCall) -> AttnResult:
    """Blockwise exact attention (see the module docstring). Options: ``block_q`` (query rows per
    step; a multiple of the tile size steps over several rows of the shared tile plan), ``block_k``
    (key tile size of the tile plan), ``chunk_k`` (most keys one matmul covers: consecutive tiles
    of one kind are merged up to this).

    Equivalent PyTorch code::

        out = reference(call)  # same result, without the (B, H, T, S) score matrix
    """
    opts = read_options(call, "blockwise", OPTIONS)
    dtype = compute_dtype(call.q.dtype)
    q, k, scale = prepared_qk(call, dtype)
    mods = kernel_form(call.score_mods)
    if (opts["kernel"] == "auto" and mods is not None and call.weight.is_builtin("softmax") and not call.dropout_p
            and not call.return_weights
            and kernel_usable(device=call.q.device, head_dim=max(call.head_dim, call.v_dim), block_q=DEFAULT_BLOCK,
                              block_k=opts["block_k"], work=call.lq * call.lk)):
        return on_kernel(call, DEFAULT_BLOCK, opts["block_k"], mods)
    qs = q if scale == 1.0 else q * scale
    n_rep = call.heads // call.kv_heads
    k_rep, v_rep = repeat_kv(k, n_rep), repeat_kv(call.v.to(product_dtype(call.q.dtype)), n_rep)
    plan = plan_blocks(call.lq, call.lk, call.mask, block_q=opts["block_q"], block_k=opts["block_k"],
                       chunk_k=opts["chunk_k"], mods=call.score_mods, weight=call.weight.kind)
    out, lse = _BlockwiseAttention.apply(qs, k_rep, v_rep, plan)  # (B, H, T, Dv), (B, H, T, 1)
    return AttnResult(out.to(call.q.dtype),
                      _weights(call, qs, k_rep, lse) if call.return_weights else None,
                      lse.squeeze(-1) if call.return_lse else None)


# ----------------------------------------------------------------------------------------------
# cost model and registration
# ----------------------------------------------------------------------------------------------

# The cost model behind impl="auto", per input dtype (thresholds measured against impl="sdpa" on
# window and padding masks, T = 128..2048, forward and forward + backward; the numbers are in
# docs/blockwise.md): ``small`` - below this many (query, key) pairs the per-tile overhead loses to
# one dense product; ``dense`` - above this fraction of tiles computed, sdpa with a dense mask is
# faster (None: never; float16 matmuls are slow on CPUs, where blockwise computes in float32).
COST = {
    torch.float64: (512 * 512, 0.75),
    torch.float32: (512 * 512, 0.75),
    torch.bfloat16: (512 * 512, 0.75),
    torch.float16: (128 * 128, None),
}
DENSE_MASK_OK = 8192 * 8192  # up to here a dense bool mask for sdpa is affordable (64 MiB)


def _computed_fraction(call: AttentionCall) -> float:
    """Fraction of the ``(block_q, block_k)`` tiles the blockwise loop computes for ``call``."""
    opts = read_options(call, "blockwise", OPTIONS)
    plan = plan_blocks(call.lq, call.lk, call.mask, block_q=opts["block_q"], block_k=opts["block_k"],
                       chunk_k=opts["chunk_k"])
    total = math.ceil(call.lq / plan.block_q) * math.ceil(call.lk / plan.block_k)
    return plan.tiles_visited() / max(1, total)


def cost_reasons(call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` should prefer another implementation (rules from measured thresholds)."""
    if sdpa_runs_fused(call):
        return ["sdpa runs this call fused without a dense mask or bias buffer, and is faster"]
    if call.return_weights:
        return ["return_weights=True materialises the T x S weights anyway: the reference computes them "
                "in one pass, faster"]
    small, dense = COST[call.q.dtype]
    if call.lq * call.lk < small:
        return [f"small problem for {call.q.dtype} (T*S = {call.lq * call.lk} < {small}): per-tile overhead "
                "outweighs one dense score matrix"]
    if dense is not None and call.lq * call.lk <= DENSE_MASK_OK and sdpa_can_run(call):
        frac = _computed_fraction(call)
        if frac > dense:
            return [f"few tiles to skip ({frac:.0%} of the tiles computed > {dense:.0%}) and T*S <= "
                    f"{DENSE_MASK_OK}: sdpa with a dense mask is faster"]
    return []


def _check(call: AttentionCall) -> list[str]:
    if call.score_mods and torch.is_grad_enabled() and holds_grad_tensor(call.score_mods):
        return ["a score modifier holds a tensor that requires grad (no gradient for it here)"]
    return []


register_impl(ImplSpec(
    name="blockwise",
    fn=blockwise,
    description="FlashAttention-2 style tiles with online softmax; O(T) memory, recomputing backward",
    scores=frozenset({"scaled_dot", "dot", "cosine"}),
    weights=frozenset({"softmax", "sigmoid"}),
    score_mods="any",
    dropout=False,
    devices=frozenset({"cpu"}),
    returns_lse=True,
    options=frozenset(OPTIONS),
    priority=6,
    check=_check,
    auto_check=cost_reasons,
))
