"""``lsh``: Reformer attention (Kitaev et al. 2020), an approximation (never chosen by ``auto``).

Queries and keys are hashed with angular LSH (random rotations ``R``; bucket = argmax of
``[xR, -xR]``), sorted by ``(bucket, position)`` and cut into chunks of ``bucket_size``; each
query attends the keys of its own chunk and of the previous one (look-one-back). ``n_hashes``
rounds are combined by the log-sum-exp of their scores, and a key that several rounds attend is
counted once (``dedup``), so the output is softmax attention restricted to the *union* of the
keys the rounds found. Cost: O(n_hashes * T * bucket_size * D) time, no T x S buffer.

Two modes:

* ``shared_qk=True`` (the Reformer): keys are the L2-normalised queries (``k`` is ignored,
  ``T == S``); one sort per round serves queries and keys. A query does not attend to itself
  unless no other key is available (its self-score is replaced by -1e5).
* ``shared_qk=False`` (default): queries and keys are hashed with the same rotations and sorted
  *together*, so that a query lands next to the keys of its bucket; chunks then mix queries and
  keys (about 4x the score work of the shared mode at ``T == S``).

Masks: causal and key padding (``padding``, ``from_key_padding``) and their ``&``; positions are
carried through the sort and the mask is evaluated on them. Randomness: rotations come from
``generator`` when given, else from ``seed`` (default 0), so a call is deterministic.

Options (``attention(..., impl="lsh", options={...})``, declared in :data:`OPTIONS`):
``bucket_size`` (chunk length, default 64), ``n_buckets`` (default: items / bucket_size,
rounded to an even number; 1 = a single bucket), ``n_hashes`` (default 4), ``shared_qk``
(default False), ``seed`` (default 0), ``dedup`` (default True), ``kernel`` (default
``"auto"``: the rounds run on the native kernel where it is built, for calls without weights
whose mask is causal and / or key padding with at least 2**20 score elements over all rounds;
``"torch"``: always in PyTorch). Attention dropout (``dropout_p``) drops each round's attended
weights in the PyTorch rounds (Reformer's way); calls with dropout never take the kernels.

``triton_lsh`` is the same attention with the rounds on the Triton kernels (CUDA; CPU only under
Triton's interpreter): hashing and sorting as PyTorch operations on the GPU, then every round's
chunks (look-one-back, causal, shared-QK, duplicate counts) in one fused kernel launch forward and
two backward, the rounds merged by their log-sum-exp. It takes the options of ``lsh`` except
``kernel``; ``bucket_size`` must be a tile size of the kernels (16 to 256, a power of two).

Layout: :mod:`.settings` (options, settings, result), :mod:`.items` (hashing and sorting),
:mod:`.core` (:func:`lsh_attention`, the rounds in PyTorch), :mod:`.on_kernel` (the rounds on
the native kernel), :mod:`.on_triton` (the rounds on the Triton kernels), this module
(registration of ``lsh`` and ``triton_lsh``).

Non-finite values: a NaN or infinite query, or key or value that a query attends in some round,
reaches that query's output (NaN), as in exact attention; which queries attend a key depends on
the buckets. Keys hidden by a key-side mask (padding, key mask) are zeroed before any arithmetic,
so whatever they hold never reaches an output or a gradient.

``return_lse`` gives each query's log-sum-exp over the keys its rounds attended, the normaliser
of its output (a key counted once with ``dedup``, once per round that found it without), so
:func:`attnkit.merge_partials` merges lsh results over disjoint key sets into attention over the
union of the keys each part attended.

Shape legend: B batch, H heads, T queries, S keys, D head dim, Dv value dim, N sorted items,
nC chunks, C chunk length, R hash rounds.
"""


from __future__ import annotations

import torch

from ...call import AttentionCall
from ...errors import AttnKitError
from ...kernels.triton_plan import triton_unavailable
from ...masks import Causal, Full, KeyMask, Padding
from ...registry import AttnResult, ImplSpec, register_impl
from .._common import read_options
from .core import SELF_SCORE, lsh_attention
from .items import hash_vectors, random_rotations
from .on_kernel import kernel_mask
from .on_triton import triton_route_reasons
from .settings import OPTIONS, LSHResult, LSHSettings, settings_from_options

__all__ = ["OPTIONS", "SELF_SCORE", "LSHSettings", "LSHResult", "settings_from_options", "random_rotations",
           "hash_vectors", "lsh_attention", "lsh", "triton_lsh"]


def lsh(call: AttentionCall) -> AttnResult:
    """The ``lsh`` implementation of :func:`attnkit.attention` (weights returned dense)."""
    res = lsh_attention(call.q, call.k, call.v, call.mask, scale=call.scale,
                        settings=LSHSettings(**read_options(call, "lsh", OPTIONS)), generator=call.generator,
                        return_weights=call.return_weights, return_lse=call.return_lse, dropout_p=call.dropout_p)
    return AttnResult(res.out, res.dense_weights(call.lk) if call.return_weights else None, res.lse)


def triton_lsh(call: AttentionCall) -> AttnResult:
    """The ``triton_lsh`` implementation: :func:`lsh` with the rounds on the Triton kernels."""
    opts = {**read_options(call, "triton_lsh", TRITON_OPTIONS), "kernel": "triton"}
    res = lsh_attention(call.q, call.k, call.v, call.mask, scale=call.scale, settings=LSHSettings(**opts),
                        generator=call.generator, return_lse=call.return_lse)
    return AttnResult(res.out, None, res.lse)


TRITON_OPTIONS = {name: opt for name, opt in OPTIONS.items() if name != "kernel"}


def _check(call: AttentionCall) -> list[str]:
    try:
        st = LSHSettings(**read_options(call, "lsh", OPTIONS))
    except AttnKitError as err:
        return [str(err)]
    if st.shared_qk and call.lq != call.lk:
        return [f"shared_qk=True needs T == S; got T={call.lq}, S={call.lk}"]
    return []


def _triton_check(call: AttentionCall) -> list[str]:
    reasons = _check(call)
    if reasons:
        return reasons
    st = LSHSettings(**read_options(call, "triton_lsh", TRITON_OPTIONS))
    return triton_route_reasons(call.q.device, st.bucket_size, max(call.head_dim, call.v_dim),
                                kernel_mask(call.mask, call.lq, call.lk), call.return_weights)


register_impl(ImplSpec(
    name="lsh",
    fn=lsh,
    description="Reformer LSH attention: hash, sort, chunked attention with look-one-back (approximate)",
    scores=frozenset({"scaled_dot", "dot"}),
    weights=frozenset({"softmax"}),
    mask_types=(Causal, Padding, KeyMask, Full),
    score_mods="none",
    dropout=True,
    returns_lse=True,
    exact=False,
    options=frozenset(OPTIONS),
    priority=510,  # after linear (the order list_impls gave by name)
    check=_check,
))

register_impl(ImplSpec(
    name="triton_lsh",
    fn=triton_lsh,
    description="Reformer LSH attention with the chunks in fused Triton kernels (GPU; approximate)",
    scores=frozenset({"scaled_dot", "dot"}),
    weights=frozenset({"softmax"}),
    mask_types=(Causal, Padding, KeyMask, Full),
    score_mods="none",
    dropout=False,
    returns_weights=False,
    returns_lse=True,
    exact=False,
    devices=frozenset({"cuda"}),
    test_devices=frozenset({"cpu"}),  # only under Triton's interpreter (the check says so)
    dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}),
    options=frozenset(TRITON_OPTIONS),
    priority=520,
    check=_triton_check,
    available=triton_unavailable,
))
