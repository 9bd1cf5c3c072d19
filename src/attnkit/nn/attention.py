"""``MultiHeadAttention``: a drop-in for ``torch.nn.MultiheadAttention`` over :func:`attnkit.attention`.

The module is a thin shell: project, split heads, (optionally) normalise q/k and rotate them,
append to a KV cache, then one :func:`attnkit.attention` call, merge heads, project out.
Beyond PyTorch's module it has grouped-query attention (``num_kv_heads``), RoPE, ALiBi, q/k
normalisation, any score/weight/implementation of attnkit, attnkit masks and a KV cache.

Masks at the module edge follow PyTorch: a bool ``attn_mask`` is True = *not allowed*, a float
one is added to the scores; ``key_padding_mask`` True = *ignore* this key. attnkit
:class:`~attnkit.masks.Mask` objects (True = attend) are accepted as ``attn_mask`` or ``mask``.
A query with no allowed key gets a zero output and zero weights (PyTorch gives NaN there).

Checkpoints: parameters are ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``; a state dict of
``nn.MultiheadAttention`` (``in_proj_weight``/``in_proj_bias`` or ``q_proj_weight``,
``k_proj_weight``, ``v_proj_weight`` when kdim/vdim differ, ``out_proj.*``) is converted on
``load_state_dict``, also when the module sits inside a bigger model.

Shape legend: B batch, T queries, S keys, E embed_dim, H heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks as _masks
from .. import scores as _scores
from ..errors import AttnKitError, DTypeError, ShapeError
from ..functional import attention
from ..masks import Mask
from ..shapes import merge_heads, split_heads
from .cache import KVCache
from .positional import RotaryEmbedding

__all__ = ["MultiHeadAttention", "torch_masks_to_attnkit", "AppendedKeys"]


# ----------------------------------------------------------------------------------------------
# the mask edge: PyTorch conventions -> attnkit (mask True = attend, float bias)
# ----------------------------------------------------------------------------------------------


def _split_float(t: Tensor) -> tuple[Tensor | None, Tensor]:
    """A float additive mask -> (bool allowed or None when all finite, bias with -inf zeroed)."""
    allowed = t != float("-inf")
    if bool(allowed.all()):
        return None, t
    return allowed, t.masked_fill(~allowed, 0.0)


def _attn_mask_4d(attn_mask: Tensor, batch: int, heads: int, lq: int, lk: int) -> Tensor:
    """PyTorch's ``attn_mask`` (T, S) or (B * H, T, S) -> broadcastable (1|B, 1|H, T, S)."""
    if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (lq, lk):
        return attn_mask.view(1, 1, lq, lk)
    if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (batch * heads, lq, lk):
        return attn_mask.view(batch, heads, lq, lk)
    raise ShapeError(f"attn_mask must have shape (T, S) = ({lq}, {lk}) or (B * num_heads, T, S) = "
                     f"({batch * heads}, {lq}, {lk}); got {tuple(attn_mask.shape)}")


def torch_masks_to_attnkit(attn_mask: Tensor | Mask | None, key_padding_mask: Tensor | None, *,
                           batch: int, heads: int, lq: int, lk: int, is_causal: bool = False,
                           dtype: torch.dtype = torch.float32) -> tuple[Mask | None, Tensor | None]:
    """Convert ``nn.MultiheadAttention``'s mask arguments to an attnkit mask and a float bias.

    ``attn_mask``: bool (True = not allowed) or float (added), ``(T, S)`` or ``(B * H, T, S)``, or
    an attnkit Mask (True = attend). ``key_padding_mask``: ``(B, S)`` bool (True = ignore) or
    float (added). ``is_causal`` without an ``attn_mask`` adds a causal mask (with one, the
    ``attn_mask`` is taken to be that causal mask, as PyTorch does). Returns ``(mask, bias)``
    where bias is ``(1|B, 1|H, T, S)``; ``-inf`` entries of float masks become mask entries, so
    fully masked rows give zeros rather than NaN.
    """
    parts: list[Mask] = []
    bias: Tensor | None = None

    def add_float(t4: Tensor) -> None:
        nonlocal bias
        allowed, b = _split_float(t4)
        if allowed is not None:
            parts.append(_masks.from_tensor(allowed))
        bias = b if bias is None else bias + b

    if isinstance(attn_mask, Mask):
        parts.append(attn_mask)
    elif attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise DTypeError(f"attn_mask must be a Tensor or an attnkit Mask; got {type(attn_mask).__name__}")
        m4 = _attn_mask_4d(attn_mask, batch, heads, lq, lk)
        if m4.dtype == torch.bool:
            parts.append(_masks.from_tensor(~m4))
        elif m4.is_floating_point():
            add_float(m4.to(dtype))
        else:
            raise DTypeError(f"attn_mask must be bool (True = not allowed) or float (additive); got {m4.dtype}")
    elif is_causal:
        parts.append(_masks.causal())
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or tuple(key_padding_mask.shape) != (batch, lk):
            got = tuple(key_padding_mask.shape) if isinstance(key_padding_mask, Tensor) else type(key_padding_mask)
            raise ShapeError(f"key_padding_mask must have shape (B, S) = ({batch}, {lk}); got {got}")
        if key_padding_mask.dtype == torch.bool:
            parts.append(_masks.from_key_padding(key_padding_mask, true_means="ignore"))
        elif key_padding_mask.is_floating_point():
            add_float(key_padding_mask.to(dtype).view(batch, 1, 1, lk))
        else:
            raise DTypeError(f"key_padding_mask must be bool (True = ignore) or float (additive); got "
                             f"{key_padding_mask.dtype}")
    mask = functools.reduce(lambda a, b: a & b, parts) if parts else None
    return mask, bias


@dataclass(frozen=True, eq=False)
class AppendedKeys(Mask):
    """``inner`` over the first ``S - extra`` keys; the last ``extra`` keys (the learned ``bias_k``
    and the zero key of ``add_zero_attn``, appended after the inputs' keys as PyTorch does) are
    attended by every query. Evaluating ``inner`` at the inputs' own length keeps its alignment
    (e.g. a bottom-right causal mask) unchanged."""

    inner: Mask
    extra: int

    @property
    def num_batch(self) -> int:  # type: ignore[override]
        return self.inner.num_batch

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.inner.num_heads

    def validate(self, lq, lk, batch, heads):
        super().validate(lq, lk, batch, heads)
        self.inner.validate(lq, lk - self.extra, batch, heads)

    def mod(self, b, h, i, j, lq, lk):
        s = lk - self.extra
        return (j >= s) | self.inner.mod(b, h, i, j.clamp(max=s - 1), lq, s)


# ----------------------------------------------------------------------------------------------
# checkpoint keys of nn.MultiheadAttention
# ----------------------------------------------------------------------------------------------


def _convert_torch_state(module: MultiHeadAttention, state: dict[str, Any], prefix: str) -> None:
    """Rewrite ``nn.MultiheadAttention`` keys under ``prefix`` to this module's keys, in place."""
    p = prefix
    if p + "in_proj_weight" in state:
        qw, kw, vw = state.pop(p + "in_proj_weight").chunk(3, dim=0)
    elif p + "q_proj_weight" in state:
        qw, kw, vw = (state.pop(p + f"{n}_proj_weight") for n in "qkv")
    else:
        return
    if module.num_kv_heads != module.num_heads:
        raise ShapeError(f"an nn.MultiheadAttention state dict has num_kv_heads == num_heads; this module has "
                         f"num_heads={module.num_heads}, num_kv_heads={module.num_kv_heads}")
    for name in ("bias_k", "bias_v"):
        if p + name in state and getattr(module, name) is None:
            raise AttnKitError(f"the state dict has {p + name} (nn.MultiheadAttention with add_bias_kv=True); "
                               "build this module with add_bias_kv=True to load it")
    state[p + "q_proj.weight"], state[p + "k_proj.weight"], state[p + "v_proj.weight"] = qw, kw, vw
    if p + "in_proj_bias" in state:
        qb, kb, vb = state.pop(p + "in_proj_bias").chunk(3, dim=0)
        state[p + "q_proj.bias"], state[p + "k_proj.bias"], state[p + "v_proj.bias"] = qb, kb, vb
    for suffix in ("weight", "bias"):
        if p + f"out_proj.{suffix}" in state:
            state[p + f"o_proj.{suffix}"] = state.pop(p + f"out_proj.{suffix}")


def _load_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    _convert_torch_state(module, state_dict, prefix)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the arguments of ``nn.MultiheadAttention`` and more.

    Args:
        embed_dim: model dim E (query input and output).
        num_heads: query heads H; ``embed_dim`` must divide by it (head dim D = E / H).
        dropout: dropout on the attention weights in training.
        bias: biases in the projections.
        kdim, vdim: key / value input dims (default E).
        batch_first: inputs ``(B, T, E)`` (default; PyTorch's default is False: ``(T, B, E)``).
        num_kv_heads: key/value heads Hkv (grouped-query; 1 = multi-query); H must divide by it.
        impl: attnkit implementation name or ``"auto"``.
        score, weight: attnkit score / weight names (or objects).
        rope: ``True`` or a :class:`RotaryEmbedding` to rotate q and k by position.
        alibi: add ALiBi biases (Press et al. 2022) with the paper's head slopes.
        qk_norm: RMS-normalise q and k per head before scoring.
        add_bias_kv: append a learned key and value (``bias_k``, ``bias_v``) to the keys/values,
            as ``nn.MultiheadAttention`` does; every query may attend to it.
        add_zero_attn: append a zero key and value (after ``bias_k``), also always attendable.

    ``forward(query, key=None, value=None, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False, *, mask=None, cache=None)``
    returns ``(out, weights)``: out ``(B, T, E)`` (or ``(T, B, E)``, or ``(T, E)`` unbatched),
    weights ``(B, T, S)`` averaged over heads, ``(B, H, T, S)`` with
    ``average_attn_weights=False``, or None when ``need_weights=False``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = True,
                 num_kv_heads: int | None = None, impl: str = "auto", score: Any = "scaled_dot",
                 weight: Any = "softmax", rope: bool | RotaryEmbedding | None = None, alibi: bool = False,
                 qk_norm: bool = False, add_bias_kv: bool = False, add_zero_attn: bool = False,
                 device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_dims(embed_dim, num_heads, num_kv_heads, dropout)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout, self.batch_first = float(dropout), batch_first
        self.impl, self.score, self.weight = impl, score, weight
        kv_out = num_kv_heads * self.head_dim
        fk = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **fk)
        self.k_proj = nn.Linear(self.kdim, kv_out, bias=bias, **fk)
        self.v_proj = nn.Linear(self.vdim, kv_out, bias=bias, **fk)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **fk)
        self.rope = RotaryEmbedding(self.head_dim) if rope is True else (rope or None)
        if self.rope is not None and self.rope.dim != self.head_dim:
            raise ShapeError(f"rope dim {self.rope.dim} must equal the head dim {self.head_dim} "
                             f"(embed_dim / num_heads)")
        self.alibi = bool(alibi)
        self.q_norm = nn.RMSNorm(self.head_dim, **fk) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, **fk) if qk_norm else None
        self.bias_k = nn.Parameter(torch.empty(1, 1, kv_out, **fk)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.empty(1, 1, kv_out, **fk)) if add_bias_kv else None
        self.add_zero_attn = bool(add_zero_attn)
        self._reset_parameters()
        self.register_load_state_dict_pre_hook(_load_hook)

    def _reset_parameters(self) -> None:
        """PyTorch's initialisation: xavier-uniform in-projections, zero biases."""
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.o_proj.bias is not None:
            nn.init.zeros_(self.o_proj.bias)
        for extra in (self.bias_k, self.bias_v):
            if extra is not None:
                nn.init.xavier_normal_(extra)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, **kwargs: Any) -> MultiHeadAttention:
        """A copy of ``mha`` (same weights, same outputs); ``kwargs`` override other options."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise AttnKitError(f"from_torch expects an nn.MultiheadAttention; got {type(mha).__name__}")
        ref = mha.in_proj_weight if mha.in_proj_weight is not None else mha.q_proj_weight
        opts = dict(embed_dim=mha.embed_dim, num_heads=mha.num_heads, dropout=mha.dropout,
                    bias=mha.in_proj_bias is not None, kdim=mha.kdim, vdim=mha.vdim,
                    batch_first=mha.batch_first, add_bias_kv=mha.bias_k is not None,
                    add_zero_attn=mha.add_zero_attn, device=ref.device, dtype=ref.dtype)
        module = cls(**{**opts, **kwargs})
        module.load_state_dict(mha.state_dict())
        return module.train(mha.training)

    # -- forward pieces -------------------------------------------------------------------------
    def _to_bte(self, x: Tensor, name: str, dim: int) -> tuple[Tensor, bool]:
        """Input -> ``(B, T, dim)``; also whether it was unbatched ``(T, dim)``."""
        if not isinstance(x, Tensor):
            raise DTypeError(f"{name} must be a Tensor; got {type(x).__name__}")
        if x.dim() == 2:
            x = x.unsqueeze(0)
            unbatched = True
        elif x.dim() == 3:
            unbatched = False
            x = x if self.batch_first else x.transpose(0, 1)
        else:
            raise ShapeError(f"{name} must be 3-D ({'B, L' if self.batch_first else 'L, B'}, {dim}) or "
                             f"unbatched (L, {dim}); got shape {tuple(x.shape)}")
        if x.shape[-1] != dim:
            raise ShapeError(f"{name} last dim must be {dim}; got shape {tuple(x.shape)}")
        return x, unbatched

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, T, E)``, ``(B, S, kdim)``, ``(B, S, vdim)`` -> q ``(B, H, T, D)``, k, v ``(B, Hkv, S, D)``."""
        q = split_heads(self.q_proj(query), self.num_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(key), self.num_kv_heads)  # (B, Hkv, S, D)
        v = split_heads(self.v_proj(value), self.num_kv_heads)  # (B, Hkv, S, D)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _append_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """``add_bias_kv`` / ``add_zero_attn``: keys/values ``(B, Hkv, S, D)`` -> ``(B, Hkv, S + n, D)``
        with the learned and/or zero key appended; also ``n``."""
        b, ks, vs = k.shape[0], [k], [v]
        if self.bias_k is not None and self.bias_v is not None:
            ks.append(split_heads(self.bias_k.expand(b, 1, -1), self.num_kv_heads))  # (B, Hkv, 1, D)
            vs.append(split_heads(self.bias_v.expand(b, 1, -1), self.num_kv_heads))
        if self.add_zero_attn:
            ks.append(k.new_zeros(*k.shape[:2], 1, k.shape[3]))
            vs.append(v.new_zeros(*v.shape[:2], 1, v.shape[3]))
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2), len(ks) - 1

    def _rotate(self, q: Tensor, k: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """RoPE: queries and new keys sit at positions ``offset .. offset + L - 1``."""
        if self.rope is None:
            return q, k
        dev = q.device
        q = self.rope(q, torch.arange(offset, offset + q.shape[2], device=dev))
        k = self.rope(k, torch.arange(offset, offset + k.shape[2], device=dev))
        return q, k

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | Mask | None = None, average_attn_weights: bool = True,
                is_causal: bool = False, *, mask: Mask | None = None,
                cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """Attend ``query`` to ``key``/``value`` (self-attention when they are omitted).

        ``mask`` is an attnkit mask (True = attend) combined with the PyTorch-style masks.
        With ``cache``, the new keys/values are appended to it and the queries attend to all
        cached positions (``is_causal`` then aligns the queries to the end of the keys); a
        static cache (cross-attention) is filled on the first call and reused after.
        """
        x_q, unbatched = self._to_bte(query, "query", self.embed_dim)
        if cache is not None and not isinstance(cache, KVCache):
            raise AttnKitError(f"cache must be an attnkit.nn.KVCache; got {type(cache).__name__}")
        static_hit = cache is not None and cache.static and not cache.is_empty
        if cache is not None and (self.bias_k is not None or self.add_zero_attn):
            raise AttnKitError("a KVCache cannot be used with add_bias_kv or add_zero_attn: the appended "
                               "keys would be cached at every step")
        if cache is not None and cache.static and self.rope is not None:
            raise AttnKitError("a static (cross-attention) KVCache cannot be used with rope: rotary positions "
                               "apply to self-attention")
        if static_hit:
            q, k, v = self._project_query(x_q), cache.keys, cache.values
        else:
            key = query if key is None else key
            value = key if value is None else value
            x_k, _ = self._to_bte(key, "key", self.kdim)
            x_v, _ = self._to_bte(value, "value", self.vdim)
            if x_k.shape[:2] != x_v.shape[:2] or x_k.shape[0] != x_q.shape[0]:
                raise ShapeError(f"key (B, S, kdim) {tuple(x_k.shape)} and value {tuple(x_v.shape)} must share "
                                 f"B and S, and B must match query {tuple(x_q.shape)}")
            q, k, v = self._project(x_q, x_k, x_v)
            offset = 0 if cache is None else cache.length
            q, k = self._rotate(q, k, offset)
            if cache is not None:
                k, v = cache.update(k, v)
        b, lq, lk = q.shape[0], q.shape[2], k.shape[2]
        if unbatched and key_padding_mask is not None and key_padding_mask.dim() == 1:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        m, bias = torch_masks_to_attnkit(attn_mask, key_padding_mask, batch=b, heads=self.num_heads, lq=lq,
                                         lk=lk, is_causal=is_causal and lq > 1, dtype=q.dtype)
        if mask is not None:
            m = mask if m is None else m & mask
        k, v, extra = self._append_kv(k, v)
        if extra:  # the appended keys are attended by every query, whatever the masks say
            m = None if m is None else AppendedKeys(m, extra)
            bias = None if bias is None else F.pad(bias, (0, extra))
        mods = (_scores.alibi(_scores.alibi_slopes(self.num_heads)),) if self.alibi else ()
        res = attention(q, k, v, m, score=self.score, weight=self.weight, bias=bias, score_mods=mods,
                        dropout_p=self.dropout if self.training else 0.0, impl=self.impl,
                        return_weights=need_weights)
        out, w = res if need_weights else (res, None)  # out (B, H, T, D), w (B, H, T, S)
        out = self.o_proj(merge_heads(out))  # (B, T, E)
        if w is not None and average_attn_weights:
            w = w.mean(dim=1)  # (B, T, S)
        if unbatched:
            return out[0], (None if w is None else w[0])
        return (out if self.batch_first else out.transpose(0, 1)), w

    def _project_query(self, x_q: Tensor) -> Tensor:
        q = split_heads(self.q_proj(x_q), self.num_heads)  # (B, H, T, D)
        return self.q_norm(q) if self.q_norm is not None else q

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}, impl={self.impl!r}, "
                f"score={self.score!r}, weight={self.weight!r}, alibi={self.alibi}"
                + (", add_bias_kv=True" if self.bias_k is not None else "")
                + (", add_zero_attn=True" if self.add_zero_attn else ""))


def _check_dims(embed_dim: int, num_heads: int, num_kv_heads: int, dropout: float) -> None:
    if embed_dim < 1 or num_heads < 1:
        raise AttnKitError(f"embed_dim and num_heads must be >= 1; got embed_dim={embed_dim}, num_heads={num_heads}")
    if embed_dim % num_heads:
        raise ShapeError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} "
                         f"(head dim = embed_dim / num_heads)")
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ShapeError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads} "
                         "(each key/value head serves num_heads / num_kv_heads query heads)")
    if not 0.0 <= dropout < 1.0:
        raise AttnKitError(f"dropout must be in [0, 1); got {dropout!r}")
