"""The tile plan in the native kernel's form, and the differentiable call of the kernel.

Shared by every implementation that runs the kernel (``impl="native"``, and ``block_sparse`` /
``blockwise`` for large problems): :func:`tile_attention` takes prepared ``q``, ``k``, ``v`` and a
mask and returns ``(out, lse)``.

Shape legend: B batch, H query heads, Hkv kv heads, T queries, S keys, D head dim, Dv value dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..masks import EMPTY, PARTIAL, Mask
from ..masks.plan import BlockMask, tile_plan
from ..scores import ScoreMod
from . import native_module, native_ready

__all__ = ["NativePlan", "native_plan", "tile_attention", "kernel_usable", "kernel_form", "KERNEL_MIN_WORK",
           "MAX_BLOCK", "MAX_HEAD_DIM", "kernel_dtype", "KernelMod", "HashedItems", "kernel_mods", "kernel_mod_reasons"]

MAX_HEAD_DIM = 256
MAX_BLOCK = 512  # the kernel batches at most this many keys (query rows) into one product


class NativePlan:
    """The tile plan in the kernel's form.

    Forward: the query blocks of each mask slice are grouped (consecutive blocks, at most ``G``,
    while the union of their key blocks wastes at most :data:`GROUP_WASTE` of the work), and each
    group lists that union: ``slice_ptr (Bm*Hm + 1)`` groups per slice, ``grp_q0 (nG,)`` /
    ``grp_nq (nG,)`` first query block and count, ``grp_ptr (nG + 1,)`` into ``grp_col (nU,)`` key
    blocks and ``grp_lib (nU, G)`` per query block -1 (full), -2 (empty) or a sub-mask index.
    Backward: ``col_ptr (Bm*Hm*nK + 1)``, ``col_row (n,)`` query block and ``col_lib (n,)`` of each
    kept tile by (slice, key block). ``masks (L, bq, bk)`` uint8 sub-masks of the partial tiles
    (1 = attend); partial tiles that allow nothing are dropped.
    """

    def __init__(self, bm: BlockMask):
        kinds = bm.kinds.cpu()
        n_bm, n_hm, n_q, n_k = kinds.shape
        idx = (kinds != EMPTY).nonzero()  # (n, 4) sorted by slice, query block, key block
        kind = kinds[tuple(idx.unbind(1))]
        lib = torch.full((len(idx),), -1, dtype=torch.int64)
        part = (kind == PARTIAL).nonzero().flatten()
        masks = torch.zeros(1, bm.block_q, bm.block_k, dtype=torch.uint8)
        if len(part):
            sub = bm.tile_mask(idx[part]).cpu()  # (nP, bq, bk) True = attend
            alive = sub.flatten(1).any(-1)
            keep = torch.ones(len(idx), dtype=torch.bool)
            keep[part[~alive]] = False
            sub = sub[alive]
            lib[part[alive]] = torch.arange(len(sub))
            idx, lib = idx[keep], lib[keep]
            if len(sub):
                masks = sub.to(torch.uint8).contiguous()
        b, h, qi, ki = idx.unbind(1)
        head = b * n_hm + h
        self.group = max(1, min(MAX_GROUP_ROWS // bm.block_q, 8))
        forward = _groups(_ptr(head * n_q + qi, n_bm * n_hm * n_q), ki, lib, n_bm * n_hm, n_q, self.group)
        order = torch.argsort((head * n_k + ki) * n_q + qi, stable=True)
        backward = (_ptr(head[order] * n_k + ki[order], n_bm * n_hm * n_k), qi[order].contiguous(),
                    lib[order].contiguous())
        self.tensors = [*forward, *backward, masks]
        self.dims = (n_bm, n_hm, n_q, n_k, bm.block_q, bm.block_k, self.group)
        self.tiles = len(idx)

    def args(self) -> tuple:
        """The plan arguments of the kernel's ``forward`` / ``backward``."""
        return (self.tensors, *self.dims)


MAX_GROUP_ROWS = 256  # query rows the forward pass handles together (shares each key/value read)
GROUP_WASTE = 0.15  # a query block joins a group if the group then computes at most this much extra


def _groups(row_ptr: Tensor, cols: Tensor, libs: Tensor, n_slices: int, n_q: int, cap: int) -> list[Tensor]:
    """Forward groups of consecutive query blocks (see :class:`NativePlan`)."""
    ptr, col, lib = row_ptr.tolist(), cols.tolist(), libs.tolist()
    slice_ptr, q0, nq, g_ptr, g_col, g_lib = [0], [], [], [0], [], []

    def close(start: int, rows: list[dict[int, int]]) -> None:
        union = sorted(set().union(*rows))
        q0.append(start)
        nq.append(len(rows))
        g_col.extend(union)
        for c in union:
            g_lib.extend([row.get(c, -2) for row in rows] + [-2] * (cap - len(rows)))
        g_ptr.append(len(g_col))

    for sl in range(n_slices):
        rows: list[dict[int, int]] = []
        start, union, kept = 0, set(), 0
        for qi in range(n_q):
            r = sl * n_q + qi
            row = dict(zip(col[ptr[r]:ptr[r + 1]], lib[ptr[r]:ptr[r + 1]]))
            if rows:
                new_union = union | row.keys()
                if len(rows) < cap and len(new_union) * (len(rows) + 1) <= (1 + GROUP_WASTE) * (kept + len(row)):
                    rows.append(row)
                    union, kept = new_union, kept + len(row)
                    continue
                close(start, rows)
            rows, start, union, kept = [row], qi, set(row), len(row)
        if rows:
            close(start, rows)
        slice_ptr.append(len(q0))
    as_t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return [as_t(slice_ptr), as_t(q0), as_t(nq), as_t(g_ptr), as_t(g_col), as_t(g_lib)]


def _ptr(ids: Tensor, n: int) -> Tensor:
    """CSR offsets ``(n + 1,)`` of sorted group ids."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(ids, minlength=n).cumsum(0)])


def native_plan(bm: BlockMask) -> NativePlan:
    """The kernel's view of the tile plan ``bm``, derived once and kept with it."""
    return bm.derive(("native",), NativePlan)


# ----------------------------------------------------------------------------------------------
# built-in score modifiers the kernel computes itself
# ----------------------------------------------------------------------------------------------

_BIAS, _ALIBI, _SOFTCAP, _HASHED = 0, 1, 2, 3  # ModKind in native_attention.cpp


class KernelMod(NamedTuple):
    """One built-in score modifier in the kernel's form: ``kind`` ``"bias"`` (``value`` the 4-D
    ``(B|1, H|1, T|1, S|1)`` bias tensor), ``"alibi"`` (``value`` the ``(H,)`` slopes),
    ``"softcap"`` (``value`` the cap, a float) or ``"hashed"`` (``value`` a :class:`HashedItems`;
    LSH attention's sorted items, see :func:`hashed_mod`)."""

    kind: str
    value: Tensor | float | HashedItems


class HashedItems(NamedTuple):
    """What the kernel's ``hashed`` modifier reads for one LSH round, whose queries and keys are
    the same ``N`` hash-sorted items (``T == S == N``).

    ``ids (B, H, 2 + R', N)`` int32: per sorted item its query position (-1: not a query), its key
    position (-1: not a key) and, for each of the ``R'`` other rounds, its chunk there (a dummy
    item: any value, it is neither query nor key). ``n_chunks``: chunks per round (of ``block``
    items each). ``causal_offset``: None, or ``o`` to keep only pairs with key position <= query
    position + ``o``. ``shared``: shared-QK mode (an item's score with itself is -1e5, constant).
    """

    ids: Tensor
    n_chunks: int
    causal_offset: int | None
    shared: bool


# the parameter the kernel reads of each of attnkit's own modifiers (``ScoreMod.builtin``)
_BUILTIN_PARAM = {"bias": "tensor", "alibi": "slopes", "softcap": "cap"}


def _is_builtin(mod: ScoreMod) -> bool:
    return mod.builtin and mod.name in _BUILTIN_PARAM


def kernel_mods(mods: Sequence[ScoreMod]) -> list[KernelMod] | None:
    """The kernel's form of ``mods`` (in order), or None when one of them is not a built-in
    ``bias`` / ``alibi`` / ``softcap`` (then the kernel cannot run the call)."""
    if not all(_is_builtin(mod) for mod in mods):
        return None
    return [KernelMod(mod.name, mod.params[_BUILTIN_PARAM[mod.name]]) for mod in mods]


def kernel_mod_reasons(mods: Sequence[ScoreMod], *, grad_enabled: bool = True) -> list[str]:
    """Why the kernel cannot run the score modifiers ``mods`` (empty: it can)."""
    reasons = []
    for mod in mods:
        if not _is_builtin(mod):
            reasons.append(f"score modifier {mod.name!r} is a user function; the kernel computes only the "
                           "built-in bias, alibi and softcap (marked by their constructors, not known by name)")
    for km in kernel_mods(mods) or ():
        if km.kind == "alibi" and grad_enabled and isinstance(km.value, Tensor) and km.value.requires_grad:
            reasons.append("alibi slopes require grad (the kernel differentiates a bias, not the slopes)")
    return reasons


def kernel_form(mods: Sequence[ScoreMod]) -> list[KernelMod] | None:
    """``mods`` in the kernel's form when the kernel can compute every one of them now (built-in
    bias / alibi / softcap, no slopes that need a gradient), else None: the caller keeps its
    PyTorch path. A call without modifiers gives ``[]``."""
    if kernel_mod_reasons(mods, grad_enabled=torch.is_grad_enabled()):
        return None
    return kernel_mods(mods)


def _bias_for_kernel(t4: Tensor, dtype: torch.dtype) -> Tensor:
    """The bias in the compute dtype, still 4-D and broadcast (never expanded): converting a bias
    that needs no gradient first drops the dims it repeats with stride 0."""
    if t4.dtype == dtype:
        return t4
    if not t4.requires_grad:
        for d in range(4):
            if t4.stride(d) == 0 and t4.shape[d] > 1:
                t4 = t4.narrow(d, 0, 1)
    return t4.to(dtype)


def _mod_args(mods: Sequence[KernelMod], dtype: torch.dtype) -> tuple[list, list, list, list]:
    """``(kinds, tensors, params, biases)`` for the kernel (``params``: a list of floats per
    modifier); ``biases`` are the tensors autograd tracks (one per bias, in order)."""
    kinds, tensors, params, biases = [], [], [], []
    empty = torch.empty(0, dtype=dtype)
    for km in mods:
        if km.kind == "bias":
            t = _bias_for_kernel(km.value, dtype)
            kinds.append(_BIAS)
            tensors.append(t)
            params.append([])
            biases.append(t)
        elif km.kind == "alibi":
            kinds.append(_ALIBI)
            tensors.append(km.value.detach().to(dtype).contiguous())
            params.append([])
        elif km.kind == "softcap":
            kinds.append(_SOFTCAP)
            tensors.append(empty)
            params.append([float(km.value)])
        elif km.kind == "hashed":
            hi = km.value
            kinds.append(_HASHED)
            tensors.append(hi.ids.contiguous())
            params.append([float(hi.n_chunks), float(hi.causal_offset is not None), float(hi.causal_offset or 0),
                           float(hi.shared)])
        else:
            raise ValueError(f"unknown kernel score modifier {km.kind!r}")
    return kinds, tensors, params, biases


class _TileAttention(torch.autograd.Function):
    """``(q, k, v, *biases) -> (out, lse)`` with the kernel; ``lse`` is -inf on rows with no
    allowed key. ``mods`` is ``(kinds, tensors, params)``; each bias of ``tensors`` is also passed
    in ``biases`` (in order) so that autograd tracks it."""

    @staticmethod
    def forward(ctx, q, k, v, plan, scale, mods, *biases):
        kinds, tensors, params = mods  # out and lse in the compute dtype (float32 for bfloat16 inputs)
        out, lse = native_module().forward(q, k, v, *plan.args(), scale, kinds, tensors, params)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale, ctx.mods = plan, scale, mods
        ctx.bias_grad = [bool(x) for x in ctx.needs_input_grad[6:]]
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        kinds, tensors, params = ctx.mods
        d_out = torch.zeros_like(out) if d_out is None else d_out
        delta = (d_out * out).sum(-1)  # (B, H, T), in the compute dtype
        if d_lse is not None:
            delta = delta - d_lse
        d_out = d_out.to(q.dtype).contiguous()  # the products take dO in the input dtype
        wants = iter(ctx.bias_grad)
        grads = [int(kind == _BIAS and next(wants)) for kind in kinds]
        dq, dk, dv, *dmods = native_module().backward(q, k, v, d_out, lse.contiguous(), delta.contiguous(),
                                                      *ctx.plan.args(), ctx.scale, kinds, tensors, params, grads)
        dbias = [g if want else None for g, want, kind in zip(dmods, grads, kinds) if kind == _BIAS]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, *dbias


def tile_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, block_q: int,
                   block_k: int, mods: Sequence[KernelMod] = ()) -> tuple[Tensor, Tensor]:
    """``(out (B, H, T, Dv), lse (B, H, T))`` of softmax attention of ``q (B, H, T, D)`` over
    ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)`` (one dtype, from :func:`kernel_dtype`: float32,
    float64, or bfloat16 whose products accumulate in float32; ``out`` and ``lse`` are then float32)
    where ``mask`` allows, with the compiled kernel; differentiable in ``q``, ``k``, ``v``, each bias of ``mods``
    and through ``lse``. ``mods`` (from :func:`kernel_mods`) modify the scaled scores in order,
    before the mask. ``lse`` is -inf (and the output zero) on rows with no allowed key. Builds the
    extension on first use (raises RuntimeError when it cannot)."""
    native_module()
    plan = native_plan(tile_plan(mask, q.shape[2], k.shape[2], block_q, block_k))
    kinds, tensors, params, biases = _mod_args(mods, torch.float32 if q.dtype == torch.bfloat16 else q.dtype)
    return _TileAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), plan, float(scale),
                                (kinds, tensors, params), *biases)


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel takes inputs of ``dtype`` in: float64 and float32 as they are, bfloat16
    as it is where libtorch exports MKL's bfloat16 GEMM (float32 otherwise), float16 as float32.
    Builds the extension on first use."""
    if dtype == torch.float64:
        return dtype
    if dtype == torch.bfloat16 and native_module().has_bf16_gemm():
        return dtype
    return torch.float32


KERNEL_MIN_WORK = 1 << 20
"""Score elements (``T x S``) from which ``block_sparse`` and ``blockwise`` hand their tiles to the
native kernel (option ``kernel="auto"``); smaller calls keep their pure-PyTorch path."""


def kernel_usable(*, device: torch.device, head_dim: int, block_q: int, block_k: int, work: int) -> bool:
    """Whether a tile implementation should run a softmax call (whose score modifiers, if any, are
    the built-in bias, alibi and softcap) on the native kernel: a CPU tensor, head dims and blocks
    the kernel takes, at least :data:`KERNEL_MIN_WORK` score elements, and the extension available
    (built on first use)."""
    if device.type != "cpu" or head_dim > MAX_HEAD_DIM or max(block_q, block_k) > MAX_BLOCK:
        return False
    return work >= KERNEL_MIN_WORK and native_ready()
