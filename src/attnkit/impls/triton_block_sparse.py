"""``triton_block_sparse``: FlashAttention-2 style Triton kernels over the shared tile plan (GPU).

Forward: one program per (query block, batch x head) walks the plan's full key blocks with no
mask work, then its partial ones with their stored sub-masks; empty tiles are never touched. The
softmax is online (running maximum and sum, base 2) and the per-row log-sum-exp is saved.
Backward (no ``T x S`` buffer): one kernel per key block accumulates dK and dV over the query
blocks of the plan's transposed lists (summed over the query heads that share a kv head), a second
one per query block accumulates dQ; both recompute the probabilities from the saved lse.

* ``return_lse``: the lse ``(B, H, T)`` float32, differentiable.
* ``return_weights``: the weights ``(B, H, T, S)`` recomputed tile by tile from the lse by a
  third kernel (zeros on empty tiles); not differentiable, so a call that asks for weights while
  its inputs require grad is declined.
* One query token without gradients (a decode step): a split-key kernel; each program takes a
  slice of the keys for the query heads of one kv head and the slices are merged by their
  log-sum-exp; with ``return_weights`` it writes the scores as it goes.
* float16 / bfloat16 products accumulate in float32; float32 products run in IEEE precision
  (never TF32). Head dims up to 256 (padded to a power of two inside the kernel). Grouped-query
  attention reads each kv head in place.
* Masks: any (the tile plan and sub-masks come from :func:`attnkit.masks.plan.tile_plan`).
  Score modifiers and dropout are declined. A row with no allowed key gives zeros and
  ``lse = -inf``; NaN in an allowed score gives NaN for its row.

Runs on CUDA tensors where the optional ``triton`` package is installed (``attnkit[gpu]``); on
CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``, for tests), and ``auto``
never picks it there.

Options: ``block_q`` / ``block_k`` (forward tiles, default 128 x 64, or 64 x 64 for a mask whose busiest
query block holds more than 4x the mean tiles); ``bwd_block_q`` /
``bwd_block_k`` (the dK/dV kernel's query step and key block, default 64 x 64; the dQ kernel
walks the transposed tiles); tiles are powers of two from 16 to 256. ``num_warps`` /
``num_stages`` and ``bwd_num_warps`` / ``bwd_num_stages`` override the launch settings.

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim, Dv value dim.
"""

from __future__ import annotations

import torch

from ..call import AttentionCall
from ..kernels.triton_plan import (
    TILE_SIZES,
    TritonPlan,
    plan_attention,
    tile_weights,
    triton_plan,
    triton_reason,
    triton_unavailable,
)
from ..registry import AttnResult, ImplSpec, register_impl
from ._common import Option, prepared_qk, read_options, sdpa_runs_fused

__all__ = ["triton_block_sparse", "OPTIONS"]


def _tile(value: int) -> str | None:
    return None if value in TILE_SIZES else f"must be one of {list(TILE_SIZES)}"


def _count(value: int) -> str | None:
    return None if value in (1, 2, 4, 8, 16) else "must be 1, 2, 4, 8 or 16"


OPTIONS = {
    "block_q": Option(int, None, "forward query tile (default 128; 64 where a few query blocks hold most of the "
                      "tiles)", check=_tile),
    "block_k": Option(int, 64, "forward key tile", check=_tile),
    "bwd_block_q": Option(int, 64, "backward dK/dV: query rows per step (dQ: keys per step)", check=_tile),
    "bwd_block_k": Option(int, 64, "backward dK/dV: keys per program (dQ: query rows per program)", check=_tile),
    "num_warps": Option(int, None, "forward warps per program (default by head dim and tile)", check=_count),
    "num_stages": Option(int, None, "forward software-pipeline depth", minimum=1),
    "bwd_num_warps": Option(int, None, "backward warps per program", check=_count),
    "bwd_num_stages": Option(int, None, "backward software-pipeline depth", minimum=1),
}
LAUNCH = ("num_warps", "num_stages", "bwd_num_warps", "bwd_num_stages")
MAX_HEAD_DIM = 256


def _needs_grad(call: AttentionCall) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in (call.q, call.k, call.v))


def _forward_plan(call: AttentionCall, block_q: int | None, block_k: int) -> TritonPlan:
    """The forward plan at ``block_q`` rows, or when not given at 128 rows, or at 64 where the
    busiest query block has more than 4x the mean tiles (BigBird's global rows): its program then
    outlasts the rest of the launch, and halving it shortened BigBird at 16k from 0.83 to 0.70 ms on
    an H100 (benchmarks/results/gpu_tune_bigbird_h100.json)."""
    plan = triton_plan(call.mask, call.lq, call.lk, block_q or 128, block_k, call.q.device)
    if block_q is None and plan.imbalance > 4.0:
        plan = triton_plan(call.mask, call.lq, call.lk, 64, block_k, call.q.device)
    return plan


def triton_block_sparse(call: AttentionCall) -> AttnResult:
    """Attention over the kept tiles of ``call.mask`` with the Triton kernels.

    Equivalent PyTorch code (what it computes, not how)::

        s = (q @ repeat_kv(k).transpose(-2, -1)) * scale        # only on kept tiles
        out = softmax(s.masked_fill(~mask.dense(T, S), -inf)) @ repeat_kv(v)
    """
    opts = read_options(call, "triton_block_sparse", OPTIONS)
    q, k, scale = prepared_qk(call)
    v = call.v
    grad = _needs_grad(call)
    if call.lq == 1 and not grad:
        from ..kernels.triton_decode import decode

        dense = call.dense_mask()
        keep = None if dense is None else dense[:, :, 0]  # (Bm, Hm, S)
        out, lse, w = decode(q.contiguous(), k.contiguous(), v.contiguous(), keep, scale, call.return_weights,
                             call.q.dtype)
        return AttnResult(out, w, lse if call.return_lse else None)
    dev = q.device
    fwd_plan = _forward_plan(call, opts["block_q"], opts["block_k"])
    bwd_plans = None
    if grad:
        bq, bk = opts["bwd_block_q"], opts["bwd_block_k"]
        bwd_plans = (triton_plan(call.mask, call.lq, call.lk, bq, bk, dev), triton_plan(call.mask, call.lq, call.lk, bk,
                                                                                       bq, dev))
    launch = {name: opts[name] for name in LAUNCH if opts[name] is not None}
    out, lse = plan_attention(q, k, v, fwd_plan, bwd_plans, scale, launch=launch)
    w = tile_weights(q.detach(), k.detach(), lse.detach(), fwd_plan, scale, call.q.dtype) if call.return_weights \
        else None
    return AttnResult(out, w, lse if call.return_lse else None)


def _check(call: AttentionCall) -> list[str]:
    if why := triton_reason(call.q.device):
        return [why]
    if call.return_weights and _needs_grad(call):
        return ["its returned weights are not differentiable (inputs require grad)"]
    return []


def _auto_check(call: AttentionCall) -> list[str]:
    """Measured on an H100 (docs/gpu.md): bf16 at T = 16k and 64k, this kernel took 0.74-0.88x
    the time of SDPA's flash kernel on causal and no mask, and a few percent of SDPA's time with
    a dense mask. Smaller sizes and float32 were not measured: those stay with SDPA."""
    if call.q.device.type != "cuda":
        return ["Triton kernels are picked by auto on CUDA tensors only"]
    if call.q.dtype not in (torch.float16, torch.bfloat16):
        return ["float32 runs in IEEE precision here (no tensor cores); sdpa is picked"]
    if call.lq * call.lk < MIN_WORK:
        return [f"T x S = {call.lq * call.lk} < {MIN_WORK}: dense sdpa is as fast at this size"]
    if sdpa_runs_fused(call) and call.lq * call.lk < MIN_FUSED_WORK:
        return [f"sdpa's flash kernel runs this mask (none or causal); measured slower than this kernel only "
                f"from T x S = {MIN_FUSED_WORK}"]
    return []


MIN_WORK = 1 << 20
MIN_FUSED_WORK = 1 << 28  # 16k x 16k: where the flash comparison was measured


register_impl(ImplSpec(
    name="triton_block_sparse",
    fn=triton_block_sparse,
    description="Triton FlashAttention-2 kernels over the tile plan (GPU; skips empty tiles)",
    scores=frozenset({"scaled_dot", "dot", "cosine"}),
    weights=frozenset({"softmax"}),
    score_mods="none",
    dropout=False,
    returns_weights=True,
    returns_lse=True,
    devices=frozenset({"cuda"}),
    test_devices=frozenset({"cpu"}),  # only under Triton's interpreter (the check says so)
    dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}),
    max_head_dim=MAX_HEAD_DIM,
    options=frozenset(OPTIONS),
    priority=3,
    check=_check,
    auto_check=_auto_check,
    available=triton_unavailable,
))
