"""Every hash round of LSH attention on the Triton kernels (GPU): the sorted items of all rounds
as one batch of tile-sparse problems (chunk ``c`` attends chunks ``c - 1`` and ``c``), the pair
rules in the kernels' ``hashed`` mode, the rounds merged by their log-sum-exp.

Hashing and sorting run as PyTorch operations on the inputs' device; the attention inside the
sorted chunks, forward and backward, is the fused kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels.triton_plan import TILE_SIZES, HashedIds, look_one_back_plan, plan_attention, triton_reason
from ...masks import Mask
from ...merge import merge_partials
from .items import _Items, _slots

__all__ = ["triton_route_reasons", "rounds_on_triton"]


def triton_route_reasons(device: torch.device, chunk: int, head_dim: int, kernel_mask: tuple | None,
                         return_weights: bool) -> list[str]:
    """Why the rounds cannot run on the Triton kernels (empty: they can)."""
    reasons = []
    if why := triton_reason(device):
        reasons.append(why)
    if chunk not in TILE_SIZES:
        reasons.append(f"bucket_size {chunk} is not one of the kernels' tile sizes {list(TILE_SIZES)}")
    if head_dim > 256:
        reasons.append(f"head dim {head_dim} > 256")
    if kernel_mask is None:
        reasons.append("the mask has a part other than causal and key padding")
    if return_weights:
        reasons.append("weights are not returned by the Triton rounds")
    return reasons


def rounds_on_triton(items: _Items, orders: Tensor, ranks: Tensor, chunk_of: Tensor | None,
                     kernel_mask: tuple[int | None, Mask | None], b: int, h: int, t: int, n_keys: int, chunk: int,
                     scale: float, shared: bool, indexed: bool = False) -> tuple[Tensor, Tensor]:
    """The rounds of :func:`attnkit.impls.lsh.on_kernel.rounds_on_kernel` (same arguments and
    result: ``out (B, H, T, Dv)``, ``lse (B, H, T)``), all rounds in one launch of each kernel.

    ``indexed``: the kernels read the unsorted items through the sort order and write each
    round's output at its queries' rows; otherwise the rows are copied into sorted order first and
    the outputs gathered back."""
    bh, n_rounds, slots = orders.shape
    n_chunks = slots // chunk
    dev = orders.device
    causal_offset, key_side = kernel_mask
    qpos = items.qpos.expand(bh, -1)  # (BH, N+1)
    kpos = items.kpos.expand(bh, -1)
    if key_side is not None:  # keys hidden from every query of a batch element: not keys there
        keep = key_side.key_keep(n_keys, device=dev).expand(b, -1).repeat_interleave(h, dim=0)  # (BH, S)
        kpos = torch.where((kpos >= 0) & keep.gather(1, kpos.clamp(min=0)), kpos, -1)
    flat = orders.reshape(bh, -1)  # (BH, R*slots)
    ids = [qpos.gather(1, flat).view(bh, n_rounds, 1, slots), kpos.gather(1, flat).view(bh, n_rounds, 1, slots)]
    if chunk_of is not None and n_rounds > 1:
        co = chunk_of.to(torch.int32)  # (BH, R, N+1)
        # at[bh, r', r, j]: chunk in round r' of the item in slot j of round r
        at = co.gather(2, flat.unsqueeze(1).expand(-1, n_rounds, -1)).view(bh, n_rounds, n_rounds, slots)
        others = torch.tensor([[o for o in range(n_rounds) if o != r] for r in range(n_rounds)], device=dev)
        pick = others.view(1, n_rounds, n_rounds - 1, 1).expand(bh, -1, -1, slots)  # (BH, R, R-1, slots)
        ids.append(at.transpose(1, 2).gather(2, pick))  # (BH, R, R-1, slots)
    idt = torch.cat([x.to(torch.int32) for x in ids], dim=2)  # (BH, R, 2+R', slots)
    idt = idt.transpose(0, 1).reshape(n_rounds * b, h, idt.shape[2], slots).contiguous()
    plan = look_one_back_plan(n_chunks, chunk, dev)
    if indexed:
        rows = orders.transpose(0, 1).to(torch.int32).reshape(n_rounds * b, h, slots)  # item of each slot
        qi, ki, vi = (x.view(b, h, items.n + 1, -1) for x in (items.qv, items.kv, items.vv))  # (B, H, N+1, E)
        hashed = HashedIds(idt, n_chunks, causal_offset, shared, rows, t)
        out, lse = plan_attention(qi, ki, vi, plan, (plan, plan), scale, hashed)  # (R*B, H, T, Dv), (R*B, H, T)
        dv = out.shape[-1]
        out, lse = out.view(n_rounds, b, h, t, dv), lse.view(n_rounds, b, h, t)
        return merge_partials([(out[r], lse[r]) for r in range(n_rounds)])
    rows = (orders.transpose(0, 1) + _slots(bh, items.n + 1, dev).view(1, bh, 1)).reshape(-1)  # (R*BH*slots,)
    qs, ks, vs = (x.reshape(-1, x.shape[-1]).index_select(0, rows).view(n_rounds * b, h, slots, -1)
                  for x in (items.qv, items.kv, items.vv))  # (R*B, H, slots, E)
    out, lse = plan_attention(qs, ks, vs, plan, (plan, plan), scale, HashedIds(idt, n_chunks, causal_offset, shared))
    dv = out.shape[-1]
    back = ranks[:, :, :t].transpose(0, 1)  # (R, BH, T): sorted slot of each query per round
    out = out.view(n_rounds, bh, slots, dv).gather(2, back.unsqueeze(-1).expand(-1, -1, -1, dv))
    lse = lse.view(n_rounds, bh, slots).gather(2, back)
    return merge_partials([(out[r].view(b, h, t, dv), lse[r].view(b, h, t)) for r in range(n_rounds)])
