"""``linear``: kernel (linear) attention, an approximation (never chosen by ``auto``).

Softmax attention weights ``exp(q.k)`` are replaced by a kernel ``phi(q) . phi(k)`` with a feature
map ``phi: R^D -> R^F``, so the ``T x S`` matrix never exists (Katharopoulos et al. 2020)::

    out_i = phi(q_i) @ (sum_j phi(k_j) v_j^T) / (phi(q_i) @ sum_j phi(k_j))

Feature maps (option ``feature_map``):

* ``"elu"`` (default): ``elu(x) + 1`` (Katharopoulos et al.); ``scale`` is not used.
* ``"favor"``: FAVOR+ positive orthogonal random features (Performer, Choromanski et al. 2021),
  an unbiased estimate of ``exp(scale * q.k)``, i.e. of softmax attention. ``n_features`` rows
  (default 256) drawn as blocks of orthogonal Gaussian directions with chi-distributed norms,
  from ``seed`` (default 0), or from ``generator`` / the global RNG on every call when
  ``redraw=True``, or given explicitly as ``projection (F, D)`` (see :class:`FavorProjection`);
  ``eps`` (default 1e-4) floors every stabilised feature (see :func:`favor_features`).
* ``"relu"``, ``"identity"`` or any callable ``phi(x (..., D)) -> (..., F)``.

Causal attention uses chunked prefix sums: within a chunk of ``chunk_size`` (default 64) the
small masked kernel matrix, across chunks a running ``(F, Dv)`` state, so memory is
O(T * F * Dv / chunk_size + T * chunk_size), not O(T * F * Dv). Masks: causal (T <= S) and key
padding, and their ``&``. A query whose kernel mass is zero (all keys masked) gets zero output.

Non-finite values propagate as in exact attention: a NaN query gives a NaN row, and a NaN key
gives NaN to every query that attends it (every query, or with ``causal`` the queries at or
after it). Keys hidden by a key-side mask (padding, key mask) are zeroed before any arithmetic
and never reach an output or a gradient.

Shape legend: B batch, H heads, G = H / Hkv query heads per kv head, T queries, S keys,
D head dim, Dv value dim, F features, nC chunks, C chunk length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..call import AttentionCall, hide_masked_keys
from ..errors import AttnKitError, ShapeError
from ..masks import And, Causal, Full, KeyMask, Mask, Padding
from ..registry import AttnResult, ImplSpec, register_impl
from ._common import Option, compute_dtype, read_options

__all__ = ["favor_projection", "favor_features", "elu_features", "FavorProjection", "LinearMask",
           "split_mask", "linear_attention", "linear"]

FeatureMap = Callable[[Tensor], Tensor]
_FEATURE_MAPS = ("elu", "favor", "relu", "identity")


def _known_feature_map(fm: str | FeatureMap) -> str | None:
    if isinstance(fm, str) and fm not in _FEATURE_MAPS:
        return f"must be one of {list(_FEATURE_MAPS)} or a callable phi(x (..., D)) -> (..., F)"
    return None


def _matrix(proj: Tensor) -> str | None:
    return None if proj.dim() == 2 else f"must be a 2-D (F, D) tensor, got shape {tuple(proj.shape)}"


def _finite(x: float) -> str | None:
    return None if math.isfinite(x) else "must be finite"


OPTIONS: dict[str, Option] = {
    "feature_map": Option((str, Callable), "elu", "the kernel's feature map: a name or phi(x (..., D)) -> (..., F)",
                          check=_known_feature_map),
    "n_features": Option(int, 256, "FAVOR+ random features F", minimum=1),
    "redraw": Option(bool, False, "FAVOR+: draw a fresh projection on every call (from generator)"),
    "chunk_size": Option(int, 64, "causal chunk length", minimum=1),
    "seed": Option(int, 0, "seed of the FAVOR+ projection", minimum=0),
    "projection": Option(Tensor, None, "FAVOR+ projection (F, D) to use instead of drawing one", check=_matrix),
    "eps": Option((float, int), 1e-4, "FAVOR+ floor added to every stabilised feature", minimum=0, check=_finite),
}


# ----------------------------------------------------------------------------------------------
# feature maps
# ----------------------------------------------------------------------------------------------


def elu_features(x: Tensor) -> Tensor:
    """``elu(x) + 1``: positive features, ``(..., D) -> (..., D)``."""
    return F.elu(x) + 1.0


def favor_projection(n_features: int, head_dim: int, *, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthogonal random features ``(F, D)``: blocks of ``D`` orthonormal rows (QR of a Gaussian
    matrix, signs fixed so the rotation is uniformly distributed), each row rescaled by the norm
    of an independent Gaussian vector (chi_D), so that every row is marginally ``N(0, I_D)`` but
    rows within a block are orthogonal."""
    if n_features < 1:
        raise AttnKitError(f"n_features must be >= 1; got {n_features}")
    blocks = []
    for _ in range(math.ceil(n_features / head_dim)):
        g = torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float64)
        qmat, rmat = torch.linalg.qr(g)  # (D, D) orthonormal columns
        qmat = qmat * torch.sign(torch.diagonal(rmat)).unsqueeze(0)  # sign fix: Haar-distributed
        blocks.append(qmat.T)
    rows = torch.cat(blocks)[:n_features]  # (F, D)
    norms = torch.randn(n_features, head_dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (rows * norms.unsqueeze(1)).to(dtype)


def favor_features(x: Tensor, projection: Tensor, *, is_query: bool, key_dims: tuple[int, ...] = (),
                   eps: float = 0.0) -> Tensor:
    """FAVOR+ positive features ``(exp(w.x - |x|^2 / 2 - c) + eps) / sqrt(F)`` of ``x (..., N, D)``
    -> ``(..., N, F)``.

    ``c`` is a stabiliser, the maximum of ``w.x`` per row for queries and over ``key_dims`` (the
    key positions) and features for keys (the finite ``w.x`` only, so that one NaN key spoils
    only its own features); with ``eps = 0`` it cancels exactly in the attention ratio.
    ``eps > 0`` floors every feature: keys far below the largest no longer vanish and the
    estimator's variance is damped, at the price of a bias toward uniform weights that grows with
    ``|x|^2``. The placement of ``c`` and ``eps`` follows the Performer reference code, so the
    two agree numerically. ``x`` should already carry ``sqrt(scale)``.
    """
    proj = x @ projection.to(x.dtype).T  # (..., N, F)
    if is_query:
        stab = proj.amax(dim=-1, keepdim=True)  # (..., N, 1)
    else:  # over the finite projections only: a NaN or infinite key spoils its own features, no others
        stab = proj.nan_to_num(nan=-math.inf, posinf=-math.inf).amax(dim=(-1, *key_dims), keepdim=True)
        stab = torch.where(stab.isfinite(), stab, torch.zeros((), dtype=stab.dtype))
    if eps == 0:
        stab = stab.detach()  # it cancels: no gradient needed (with eps > 0 it does not cancel)
    half_sq = (x * x).sum(-1, keepdim=True) / 2  # (..., N, 1)
    return (torch.exp(proj - half_sq - stab) + eps) / math.sqrt(projection.shape[0])


class FavorProjection(nn.Module):
    """Holds a FAVOR+ projection and redraws it every ``redraw_interval`` calls in training mode
    (Performer's feature redrawing). Pass ``options={"feature_map": "favor", "projection": p()}``."""

    def __init__(self, n_features: int, head_dim: int, *, redraw_interval: int | None = 1000,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_features, self.head_dim = n_features, head_dim
        self.redraw_interval, self.generator = redraw_interval, generator
        self.register_buffer("projection", favor_projection(n_features, head_dim, generator=generator))
        self.calls = 0

    def redraw(self) -> None:
        """Draw a fresh projection in place."""
        new = favor_projection(self.n_features, self.head_dim, generator=self.generator)
        self.projection.copy_(new.to(self.projection))

    def forward(self) -> Tensor:
        """The current projection ``(F, D)``, redrawn first when the interval is reached."""
        if self.training and self.redraw_interval and self.calls and self.calls % self.redraw_interval == 0:
            self.redraw()
        self.calls += 1
        return self.projection


# ----------------------------------------------------------------------------------------------
# options and masks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearMask:
    """What linear attention can honour: a causal offset (query ``i`` sees keys ``j <= i + offset``)
    and a key-keep tensor ``(Bm, S)``."""

    causal_offset: int | None = None
    keep: Tensor | None = None


def split_mask(mask: Mask | None, lq: int, lk: int) -> LinearMask:
    """Decompose ``mask`` into a causal offset and key padding; raises :class:`AttnKitError` for
    anything else (windows, ``|``, ``~``, ...)."""
    if mask is None:
        return LinearMask()
    parts = list(_and_leaves(mask))
    offset, keep = None, None
    for m in parts:
        if isinstance(m, Full):
            continue
        if isinstance(m, Causal):
            off = lk - lq if m.align == "bottom_right" else 0
            offset = off if offset is None else min(offset, off)
        elif isinstance(m, (Padding, KeyMask)):
            b = torch.arange(m.num_batch).view(-1, 1)
            j = torch.arange(lk).view(1, -1)
            z = torch.zeros((), dtype=torch.int64)
            k = m.mod(b, z, z, j, lq, lk).expand(m.num_batch, lk)  # (Bm, S)
            keep = k if keep is None else keep & k
        else:
            raise AttnKitError(f"linear attention supports causal and key-padding masks (and their &); "
                               f"got a {type(m).__name__} mask")
    if offset is not None and (offset < 0 or lq + offset > lk):
        raise AttnKitError(f"causal linear attention needs every query aligned to a key (T <= S); got T={lq}, "
                           f"S={lk}, offset {offset}")
    return LinearMask(offset, keep)


def _and_leaves(mask: Mask):
    if isinstance(mask, And):
        for part in mask.parts:
            yield from _and_leaves(part)
    else:
        yield mask


@dataclass(frozen=True)
class _Settings:
    """Validated ``linear`` options (see :data:`OPTIONS`); a bad value raises :class:`AttnKitError`."""

    feature_map: str | FeatureMap = OPTIONS["feature_map"].default
    n_features: int = OPTIONS["n_features"].default
    redraw: bool = OPTIONS["redraw"].default
    chunk_size: int = OPTIONS["chunk_size"].default
    seed: int = OPTIONS["seed"].default
    projection: Tensor | None = OPTIONS["projection"].default
    eps: float = OPTIONS["eps"].default

    def __post_init__(self):
        for f in fields(self):
            OPTIONS[f.name].parse("linear", f.name, getattr(self, f.name))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> _Settings:
        """Settings from an ``options`` mapping; raises :class:`AttnKitError` on an unknown name."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise AttnKitError(f"unknown linear options {unknown}; accepted: {sorted(OPTIONS)}")
        return cls(**options)


# ----------------------------------------------------------------------------------------------
# the functional core
# ----------------------------------------------------------------------------------------------


def _feature_pair(q: Tensor, k: Tensor, st: _Settings, scale: float,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``phi(q) (B, Hkv, G, T, F)`` and ``phi(k) (B, Hkv, 1, S, F)``."""
    fm = st.feature_map
    if fm == "favor":
        proj = st.projection
        if proj is None:
            gen = generator if st.redraw else torch.Generator().manual_seed(st.seed)
            proj = favor_projection(st.n_features, q.shape[-1], generator=gen)
        if proj.shape[1] != q.shape[-1]:
            raise ShapeError(f"linear option 'projection' has shape {tuple(proj.shape)}; expected (F, {q.shape[-1]})")
        proj = proj.to(q.device)
        root = math.sqrt(scale)
        return (favor_features(q * root, proj, is_query=True, eps=st.eps),
                favor_features(k * root, proj, is_query=False, key_dims=(-2,), eps=st.eps))
    phi = {"elu": elu_features, "relu": F.relu, "identity": lambda x: x}.get(fm, fm)  # type: ignore[arg-type]
    return phi(q), phi(k)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with zero where ``den == 0`` (no kernel mass: zero output, zero grad)."""
    alive = den != 0
    return torch.where(alive, num / torch.where(alive, den, torch.ones((), dtype=den.dtype)),
                       torch.zeros((), dtype=num.dtype))


def _noncausal(pq: Tensor, pk: Tensor, v: Tensor) -> Tensor:
    """``pq (..., T, F)``, ``pk (..., S, F)``, ``v (..., S, Dv)`` -> ``(..., T, Dv)``."""
    kv = pk.transpose(-1, -2) @ v  # (..., F, Dv)
    ksum = pk.sum(-2, keepdim=True)  # (..., 1, F)
    num = pq @ kv  # (..., T, Dv)
    den = (pq * ksum).sum(-1, keepdim=True)  # (..., T, 1)
    return _ratio(num, den)


def _exclusive_cumsum(x: Tensor, dim: int) -> Tensor:
    """Sum of the entries strictly before each index along ``dim`` (shifted, not ``cumsum - x``,
    which would let a non-finite entry reach its own index)."""
    c = x.cumsum(dim).narrow(dim, 0, x.shape[dim] - 1)
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), c], dim)


def _causal_chunked(pq: Tensor, pk: Tensor, v: Tensor, chunk: int) -> Tensor:
    """Causal kernel attention, ``T == S``: ``pq (..., T, F)``, ``pk (..., T, F)``, ``v (..., T, Dv)``."""
    t = pq.shape[-2]
    chunk = min(chunk, t)
    n_chunks = math.ceil(t / chunk)
    pad = n_chunks * chunk - t
    if pad:
        pq, pk, v = (F.pad(x, (0, 0, 0, pad)) for x in (pq, pk, v))
    pq_c = pq.unflatten(-2, (n_chunks, chunk))  # (..., nC, C, F)
    pk_c = pk.unflatten(-2, (n_chunks, chunk))  # (..., nC, C, F)
    v_c = v.unflatten(-2, (n_chunks, chunk))  # (..., nC, C, Dv)
    state = _exclusive_cumsum(pk_c.transpose(-1, -2) @ v_c, dim=-3)  # (..., nC, F, Dv) before each chunk
    ksum = _exclusive_cumsum(pk_c.sum(-2), dim=-2).unsqueeze(-1)  # (..., nC, F, 1)
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=pq.device).tril()
    intra = (pq_c @ pk_c.transpose(-1, -2)).masked_fill(~tril, 0.0)  # (..., nC, C, C)
    num = intra @ v_c + pq_c @ state  # (..., nC, C, Dv)
    den = intra.sum(-1, keepdim=True) + pq_c @ ksum  # (..., nC, C, 1)
    out = _ratio(num, den).flatten(-3, -2)  # (..., nC*C, Dv)
    return out[..., :t, :]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, *, scale: float | None = None,
                     options: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
                     return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Kernel attention on ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)``.

    Returns ``out (B, H, T, Dv)``, and with ``return_weights`` also the implied weights
    ``phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')`` as a dense ``(B, H, T, S)`` tensor.
    ``options`` are those of ``attention(..., impl="linear", options=...)`` (:data:`OPTIONS`).
    NaN in a query, or in a key or value that a query attends, makes its output row NaN; keys
    hidden by a key-side mask (padding, key mask) never reach an output or a gradient.
    """
    return _linear(q, k, v, mask, scale, _Settings.from_options(options or {}), generator, return_weights)


def _linear(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float | None, st: _Settings,
            generator: torch.Generator | None, return_weights: bool) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`linear_attention` with validated settings."""
    if mask is not None:  # keys hidden from every query: zeroed, so NaN there cannot leak
        k, v = hide_masked_keys(mask, k, v)
    b, h, t, d = q.shape
    hkv, s, dv = k.shape[1], k.shape[2], v.shape[3]
    g = h // hkv
    scale = d ** -0.5 if scale is None else scale
    lm = split_mask(mask, t, s)
    work = compute_dtype(q.dtype)
    qg = q.to(work).view(b, hkv, g, t, d)  # (B, Hkv, G, T, D)
    kg = k.to(work).unsqueeze(2)  # (B, Hkv, 1, S, D)
    vg = v.to(work).unsqueeze(2)  # (B, Hkv, 1, S, Dv)
    pq, pk = _feature_pair(qg, kg, st, scale, generator)  # (B, Hkv, G, T, F), (B, Hkv, 1, S, F)
    if lm.keep is not None:
        keep = lm.keep.to(device=pk.device, dtype=pk.dtype).view(-1, 1, 1, s, 1)  # (Bm, 1, 1, S, 1)
        pk = pk * keep
    if lm.causal_offset is None:
        out = _noncausal(pq, pk, vg)  # (B, Hkv, G, T, Dv)
    else:
        off = lm.causal_offset
        pq_aligned = F.pad(pq, (0, 0, off, s - t - off))  # (B, Hkv, G, S, F): query i at key slot i + off
        out = _causal_chunked(pq_aligned, pk.expand(*pq.shape[:3], s, pk.shape[-1]),
                              vg.expand(*pq.shape[:3], s, dv), st.chunk_size)[..., off:off + t, :]
    out = out.reshape(b, h, t, dv).to(q.dtype)
    if not return_weights:
        return out
    return out, _dense_weights(pq, pk, lm.causal_offset, t, s).reshape(b, h, t, s).to(q.dtype)


def _dense_weights(pq: Tensor, pk: Tensor, offset: int | None, t: int, s: int) -> Tensor:
    """The implied ``(B, Hkv, G, T, S)`` weights (materialised; for inspection)."""
    a = pq @ pk.transpose(-1, -2)  # (B, Hkv, G, T, S)
    if offset is not None:
        allowed = torch.arange(s, device=a.device).view(1, -1) <= torch.arange(t, device=a.device).view(-1, 1) + offset
        a = a.masked_fill(~allowed, 0.0)
    return _ratio(a, a.sum(-1, keepdim=True))


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------


def linear(call: AttentionCall) -> AttnResult:
    """The ``linear`` implementation of :func:`attnkit.attention`."""
    st = _Settings(**read_options(call, "linear", OPTIONS))
    res = _linear(call.q, call.k, call.v, call.mask, call.scale, st, call.generator, call.return_weights)
    return AttnResult(*res) if call.return_weights else AttnResult(res)


def _check(call: AttentionCall) -> list[str]:
    try:
        _Settings(**read_options(call, "linear", OPTIONS))
        split_mask(call.mask, call.lq, call.lk)
    except AttnKitError as err:
        return [str(err)]
    return []


register_impl(ImplSpec(
    name="linear",
    fn=linear,
    description="kernel attention (elu+1, FAVOR+ random features); no T x S matrix (approximate)",
    scores=frozenset({"scaled_dot", "dot"}),
    weights=frozenset({"softmax"}),
    mask_types=(Causal, Padding, KeyMask, Full),
    score_mods="none",
    dropout=False,
    exact=False,
    options=frozenset(OPTIONS),
    priority=500,
    check=_check,
))
