"""``native``: a C++ FlashAttention-2 kernel over the shared tile plan, compiled on first use.

The kernel (``attnkit/kernels/native_attention.cpp``) walks the tile plan
(:func:`attnkit.masks.plan.tile_plan`) of the call's mask: empty tiles are skipped, full tiles run
with no mask work and partial tiles apply their boolean sub-mask. Consecutive kept tiles of a row
form one matrix product (BLAS ``sgemm``/``dgemm`` on views of the inputs, no copies), the softmax
is online (running maximum and sum per row) and the per-row log-sum-exp is saved. The backward
pass recomputes the probabilities from it, one key block at a time (dK and dV accumulate locally;
dQ goes to its rows), so memory stays linear in T. Work is shared out with ``at::parallel_for``
over (batch, head, query block) forward and (batch, kv head[, key block]) backward.

Grouped-query attention reads each kv head in place (no repeat); a one-token decode step folds
the query heads that share a kv head into the rows of one product. float32 and float64 run
natively; bfloat16 / float16 are computed in float32 (output in the input dtype, ``lse`` float32).
Rows with no allowed key give zeros and ``lse = -inf``; a NaN or infinite score in an allowed
position gives NaN for its row, as in PyTorch.

The extension is built by :func:`attnkit.kernels.native_module` the first time this
implementation runs (never at import). Where it cannot be built (no compiler, no ninja, a failed
build) the spec's ``available`` hook says why, ``impl="auto"`` uses the pure-PyTorch
implementations and ``attnkit.explain_dispatch`` shows the reason. A build that fails during a
call hands that call to the next capable exact implementation.

Score modifiers: the built-in ``bias`` (``attention(bias=...)`` or ``scores.bias``), ``alibi``
and ``softcap`` run inside the kernel, in the order the call gives them (a bias passed as
``bias=`` first), on the scaled scores before the mask, forward and backward: the bias is read in
place through its strides (a broadcast bias is never expanded) and gets its gradient, reduced
over its broadcast dims, when it requires grad. A user's own ``score_mod`` is declined (the
dispatcher says why); so are ALiBi slopes that require grad.

Options: ``block`` / ``block_q`` / ``block_k`` (tile sizes, default
:data:`attnkit.masks.base.DEFAULT_BLOCK`, at most 512).

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim, Dv value dim,
nQ / nK query / key blocks.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..call import AttentionCall
from ..errors import UnsupportedError
from ..kernels.tiles import MAX_BLOCK, MAX_HEAD_DIM, kernel_mod_reasons, kernel_mods
from ..masks import Causal
from ..masks.base import DEFAULT_BLOCK
from ..registry import AttnResult, ImplSpec, get_impl, list_impls, not_supported_reasons, register_impl
from ._common import Option, on_kernel, read_options

__all__ = ["native", "OPTIONS", "cost_reasons"]

OPTIONS = {
    "block": Option(int, DEFAULT_BLOCK, "tile size of queries and keys", minimum=1),
    "block_q": Option(int, None, "query rows per tile (default: block)", minimum=1),
    "block_k": Option(int, None, "keys per tile (default: block)", minimum=1),
}


def _blocks(call: AttentionCall) -> tuple[int, int]:
    opts = read_options(call, "native", OPTIONS)
    bq = opts["block"] if opts["block_q"] is None else opts["block_q"]
    bk = opts["block"] if opts["block_k"] is None else opts["block_k"]
    return bq, bk


def _next_impl(call: AttentionCall) -> ImplSpec | None:
    """The first other exact implementation, in ``impl="auto"`` order, that can run ``call``."""
    for name in list_impls():
        spec = get_impl(name)
        if name != "native" and spec.exact and not not_supported_reasons(spec, call):
            if spec.auto_check is None or not spec.auto_check(call):
                return spec
    return None


def native(call: AttentionCall) -> AttnResult:
    """Attention over the kept tiles of ``call.mask`` with the compiled kernel.

    Equivalent PyTorch code (what it computes, not how)::

        s = (q @ repeat_kv(k).transpose(-2, -1)) * scale        # only on kept tiles
        s = apply_mods(s, call.score_mods, b, h, i, j, T, S)    # bias, alibi, softcap, in order
        out = softmax(s.masked_fill(~mask.dense(T, S), -inf)) @ repeat_kv(v)
    """
    try:
        kernels.native_module()
    except RuntimeError:  # first use and the build failed: this call runs elsewhere, auto skips native now
        spec = _next_impl(call)
        if spec is None:
            raise
        return spec.fn(call)
    bq, bk = _blocks(call)
    mods = kernel_mods(call.score_mods)
    if mods is None:  # the dispatcher declines these; reached only by calling this function directly
        raise UnsupportedError(f"impl 'native' runs only the built-in score modifiers bias, alibi and softcap; "
                               f"got {[m.name for m in call.score_mods]}")
    return on_kernel(call, bq, bk, mods)


# ----------------------------------------------------------------------------------------------
# capabilities, cost model and registration
# ----------------------------------------------------------------------------------------------


def _check(call: AttentionCall) -> list[str]:
    opts = read_options(call, "native", OPTIONS)
    big = [name for name in ("block", "block_q", "block_k") if (opts[name] or 0) > MAX_BLOCK]
    reasons = [f"option {name} > {MAX_BLOCK}" for name in big]
    if call.score_mods:
        reasons += kernel_mod_reasons(call.score_mods, grad_enabled=torch.is_grad_enabled())
    return reasons


def cost_reasons(call: AttentionCall) -> list[str]:
    """Why ``impl="auto"`` should leave ``call`` to another implementation (thresholds measured
    with benchmarks/bench_native.py; the numbers are in docs/native.md)."""
    if call.lq * call.lk < MIN_WORK:
        return [f"T x S = {call.lq * call.lk} < {MIN_WORK}: dense sdpa is faster at this size"]
    if call.mask is None or (isinstance(call.mask, Causal) and (call.lq == call.lk or call.mask.align == "top_left")):
        if not call.requires_grad and not call.score_mods:  # with modifiers sdpa needs a dense (T, S) bias
            return ["sdpa's fused kernel runs this mask as fast or faster (forward)"]
    return []


MIN_WORK = 1 << 16

register_impl(ImplSpec(
    name="native",
    fn=native,
    description="C++ FlashAttention-2 kernel over the tile plan (skips empty tiles); built on first use",
    scores=frozenset({"scaled_dot", "dot", "cosine"}),
    weights=frozenset({"softmax"}),
    score_mods="builtin",  # the built-in bias, alibi and softcap; _check names a user's modifier it declines
    dropout=False,
    returns_weights=False,
    returns_lse=True,
    devices=frozenset({"cpu"}),
    dtypes=frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16}),
    max_head_dim=MAX_HEAD_DIM,
    options=frozenset(OPTIONS),
    priority=4,
    check=_check,
    auto_check=cost_reasons,
    available=kernels.unavailable_reason,
))
