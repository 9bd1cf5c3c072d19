"""``MultiHeadAttention``: attnkit's one multi-head attention module, over :func:`attnkit.attention`.

A forward pass has three stages, each a public method, so that a model can put its own steps
between them (BERT runs the projections on the real tokens of a padded batch only):

1. :meth:`~MultiHeadAttention.project`: the q/k/v in-projections, position-wise (one matmul with
   ``fused_qkv=True``);
2. :meth:`~MultiHeadAttention.attend`: split heads, q/k normalisation, RoPE, the KV cache, one
   :func:`attnkit.attention` call (any score, weight, implementation, mask), merge heads;
3. ``o_proj``, the output projection.

:meth:`~MultiHeadAttention.forward` runs them with the calling convention of
``torch.nn.MultiheadAttention``; the PyTorch conventions (mask polarity, ``(T, B, E)`` inputs,
checkpoint keys, ``add_bias_kv``, ``need_weights``) are converted at the edge by
:mod:`attnkit.nn.torch_compat`. ``docs/migration.md`` lists where the two modules differ.

Checkpoint keys: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (or ``qkv_proj``, rows q then k
then v, and ``o_proj`` with ``fused_qkv=True``); either layout loads into either module, and a
state dict of ``nn.MultiheadAttention`` loads too (also nested in a bigger model).

Shape legend: B batch, T queries, S keys, E embed_dim, H heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from . import torch_compat as _tc
from .cache import KVCache
from .positional import RotaryEmbedding

__all__ = ["MultiHeadAttention"]


def _as_mask(mask: Mask | Tensor | None) -> Mask | None:
    """attnkit's mask argument (True = attend): a Mask, or a bool tensor ``(T, S)`` or ``(B|1, H|1, T, S)``."""
    if mask is None or isinstance(mask, Mask):
        return mask
    if not isinstance(mask, Tensor):
        raise DTypeError(f"mask must be an attnkit Mask or a bool tensor (True = attend); got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise DTypeError(f"mask takes attnkit's convention, a bool tensor with True = attend; got dtype {mask.dtype}. "
                         "Pass an additive float mask as attn_mask=")
    if mask.dim() not in (2, 4):
        raise ShapeError(f"mask tensor must be (T, S) or (B|1, H|1, T, S), True = attend; got shape "
                         f"{tuple(mask.shape)} (a 3-D mask is ambiguous: use m[:, None] for (B, 1, T, S))")
    return _masks.from_tensor(mask)


def _load_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    module._convert_state(state_dict, prefix)  # type: ignore[operator]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the arguments of ``nn.MultiheadAttention`` and more.

    Args:
        embed_dim: model dim E (query input and output).
        num_heads: query heads H; ``embed_dim`` must divide by it (head dim D = E / H).
        dropout: dropout on the attention weights in training.
        bias: biases in the projections.
        kdim, vdim: key / value input dims (default E).
        batch_first: inputs ``(B, T, E)`` (True, the default) or ``(T, B, E)`` (False, PyTorch's
            default). Loading an ``nn.MultiheadAttention`` state dict into a module built without
            it warns, since the two defaults differ.
        num_kv_heads: key/value heads Hkv (grouped-query; 1 = multi-query); H must divide by it.
        impl: attnkit implementation name or ``"auto"``.
        score, weight: attnkit score / weight names (or objects).
        rope: ``True`` or a :class:`RotaryEmbedding` to rotate q and k by position.
        alibi: add ALiBi biases (Press et al. 2022) with the paper's head slopes.
        qk_norm: RMS-normalise q and k per head before scoring.
        add_bias_kv: append a learned key and value (``bias_k``, ``bias_v``) to the keys/values,
            as ``nn.MultiheadAttention`` does; every query may attend to it.
        add_zero_attn: append a zero key and value (after ``bias_k``), also always attendable.
        fused_qkv: one ``qkv_proj`` Linear ``(E + 2 * Hkv * D, E)`` instead of three (one matmul
            for self-attention); needs ``kdim == vdim == E``.
        impl_options: options of the implementation for every call (e.g. ``{"bucket_size": 16}``
            for ``impl="lsh"``); a call's own ``options`` replace them.

    Example:
        >>> import torch
        >>> mha = MultiHeadAttention(16, 4, num_kv_heads=2)
        >>> out, w = mha(torch.randn(2, 5, 16), is_causal=True)
        >>> tuple(out.shape), tuple(w.shape)
        ((2, 5, 16), (2, 5, 5))

    Shape legend: B batch, T queries, S keys, E embed_dim, H heads, Hkv key/value heads, D head dim.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool | None = None,
                 num_kv_heads: int | None = None, impl: str = "auto", score: Any = "scaled_dot",
                 weight: Any = "softmax", rope: bool | RotaryEmbedding | None = None, alibi: bool = False,
                 qk_norm: bool = False, add_bias_kv: bool = False, add_zero_attn: bool = False,
                 fused_qkv: bool = False, impl_options: Mapping[str, Any] | None = None, device: Any = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_dims(embed_dim, num_heads, num_kv_heads, dropout)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = float(dropout)
        self.batch_first = True if batch_first is None else bool(batch_first)
        self._layout_stated = batch_first is not None
        self.impl, self.score, self.weight = impl, score, weight
        self.impl_options = None if impl_options is None else dict(impl_options)
        kv_out = num_kv_heads * self.head_dim
        self._sizes = (embed_dim, kv_out, kv_out)  # rows of q, k, v in the fused projection
        fk = {"device": device, "dtype": dtype}
        if fused_qkv and not self.kdim == self.vdim == embed_dim:
            raise ShapeError(f"fused_qkv=True projects one input to q, k and v, so it needs kdim == vdim == "
                             f"embed_dim={embed_dim}; got kdim={self.kdim}, vdim={self.vdim}")
        self.qkv_proj = nn.Linear(embed_dim, sum(self._sizes), bias=bias, **fk) if fused_qkv else None
        self.q_proj = None if fused_qkv else nn.Linear(embed_dim, embed_dim, bias=bias, **fk)
        self.k_proj = None if fused_qkv else nn.Linear(self.kdim, kv_out, bias=bias, **fk)
        self.v_proj = None if fused_qkv else nn.Linear(self.vdim, kv_out, bias=bias, **fk)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **fk)
        self.rope = RotaryEmbedding(self.head_dim) if rope is True else (rope or None)
        if self.rope is not None and self.rope.dim != self.head_dim:
            raise ShapeError(f"rope dim {self.rope.dim} must equal the head dim {self.head_dim} "
                             f"(embed_dim / num_heads)")
        self.alibi = bool(alibi)
        self.q_norm = nn.RMSNorm(self.head_dim, **fk) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, **fk) if qk_norm else None
        if (add_bias_kv or add_zero_attn) and (self.rope is not None or qk_norm):
            raise AttnKitError("add_bias_kv / add_zero_attn (nn.MultiheadAttention's appended keys) cannot be "
                               "combined with rope or qk_norm: the appended keys have no position and are not "
                               "normalised")
        self.bias_k = nn.Parameter(torch.empty(1, 1, kv_out, **fk)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.empty(1, 1, kv_out, **fk)) if add_bias_kv else None
        self.add_zero_attn = bool(add_zero_attn)
        self._reset_parameters()
        self.register_load_state_dict_pre_hook(_load_hook)

    def _reset_parameters(self) -> None:
        """PyTorch's initialisation: xavier-uniform in-projections, zero biases."""
        for lin in (self.qkv_proj, self.q_proj, self.k_proj, self.v_proj):
            if lin is not None:
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
        """A copy of ``mha`` (same weights, same layout, same outputs); ``kwargs`` override options."""
        module = cls(**{**_tc.torch_mha_options(mha), **kwargs})
        module.load_state_dict(mha.state_dict())
        return module.train(mha.training)

    # -- checkpoints ----------------------------------------------------------------------------
    def _convert_state(self, state: dict[str, Any], prefix: str) -> None:
        """Load-state-dict pre-hook: PyTorch keys -> ours, then the q/k/v keys to this module's
        layout (fused ``qkv_proj`` or separate ``q_proj``/``k_proj``/``v_proj``), in place."""
        converted = _tc.convert_torch_state(state, prefix, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                                            has_bias_kv=self.bias_k is not None)
        if converted and not self._layout_stated:
            _tc.warn_layout_after_torch_load()
        for suffix in ("weight", "bias"):
            parts = [f"{prefix}{n}_proj.{suffix}" for n in "qkv"]
            fused = f"{prefix}qkv_proj.{suffix}"
            if self.qkv_proj is not None and all(p in state for p in parts):
                state[fused] = torch.cat([state.pop(p) for p in parts], dim=0)  # (E + 2 Hkv D, ...)
            elif self.qkv_proj is None and fused in state and state[fused].shape[0] == sum(self._sizes):
                for p, t in zip(parts, state.pop(fused).split(self._sizes, dim=0)):
                    state[p] = t

    # -- the three stages -----------------------------------------------------------------------
    def project(self, query: Tensor, key: Tensor | None = None,
                value: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The in-projections, position-wise over any leading dims: ``query (..., E)`` ->
        ``q (..., H * D)``; ``key (..., kdim)``, ``value (..., vdim)`` -> ``k``, ``v (..., Hkv * D)``.
        ``key`` defaults to ``query`` (self-attention: one matmul with ``fused_qkv``), ``value`` to ``key``."""
        kv_in = query if key is None else key
        v_in = kv_in if value is None else value
        if self.qkv_proj is None:
            assert self.q_proj is not None and self.k_proj is not None and self.v_proj is not None
            return self.q_proj(query), self.k_proj(kv_in), self.v_proj(v_in)
        if key is None and value is None:
            q, k, v = self.qkv_proj(query).split(self._sizes, dim=-1)  # (..., E), (..., Hkv D) x 2
            return q, k, v
        ws = self.qkv_proj.weight.split(self._sizes, dim=0)
        bs = (None,) * 3 if self.qkv_proj.bias is None else self.qkv_proj.bias.split(self._sizes, dim=0)
        return F.linear(query, ws[0], bs[0]), F.linear(kv_in, ws[1], bs[1]), F.linear(v_in, ws[2], bs[2])

    def _project_query(self, query: Tensor) -> Tensor:
        """``query (..., E) -> q (..., H * D)`` alone (keys and values come from a static cache)."""
        if self.q_proj is not None:
            return self.q_proj(query)
        assert self.qkv_proj is not None
        e = self.embed_dim
        b = None if self.qkv_proj.bias is None else self.qkv_proj.bias[:e]
        return F.linear(query, self.qkv_proj.weight[:e], b)

    def attend(self, q: Tensor, k: Tensor | None, v: Tensor | None, mask: Mask | Tensor | None = None, *,
               bias: Tensor | None = None, is_causal: bool | None = None, cache: KVCache | None = None,
               need_weights: bool = False, impl: str | None = None,
               options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor | None]:
        """Attention over projected inputs, in attnkit's conventions.

        Args:
            q: projected queries ``(B, T, H * D)``.
            k, v: projected keys and values ``(B, S, Hkv * D)``; None when a filled static
                ``cache`` holds them.
            mask: an attnkit mask, True = attend: a :class:`~attnkit.masks.Mask` or a bool tensor
                ``(T, S)`` / ``(B|1, H|1, T, S)`` (S counts the cached keys too).
            bias: float ``(1|B, 1|H, T, S)`` added to the scores.
            is_causal: add a bottom-right causal mask (the last query sees the last key). The
                default (None) is causal when a non-static ``cache`` is given and ``mask`` is
                None (a decoder's cache), else not; pass False for a bidirectional cached call.
            cache: a :class:`KVCache`; the new keys/values (rotated by RoPE at positions
                ``cache.length ..``) are appended and all cached ones are attended.
            need_weights: also return the weights.
            impl, options: override the module's implementation for this call, and its options.

        Returns:
            ``(out (B, T, H * D), weights (B, H, T, S) or None)``; ``out`` is before ``o_proj``.
        """
        self._check_cache(cache)
        _check_projected(q, "q", self.embed_dim)
        q = split_heads(q, self.num_heads)  # (B, H, T, D)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if cache is not None and cache.static and not cache.is_empty:
            k, v = cache.keys, cache.values  # (B, Hkv, S, D)
        else:
            if k is None or v is None:
                raise AttnKitError("attend needs k and v (B, S, Hkv * D) unless a filled static KVCache holds them")
            _check_projected(k, "k", self._sizes[1])
            _check_projected(v, "v", self._sizes[2])
            k = split_heads(k, self.num_kv_heads)  # (B, Hkv, S, D)
            v = split_heads(v, self.num_kv_heads)  # (B, Hkv, S, D)
            if self.k_norm is not None:
                k = self.k_norm(k)
            q, k = self._rotate(q, k, 0 if cache is None else cache.length)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, Hkv, S_cached + S, D)
        m = _as_mask(mask)
        if is_causal is None:
            is_causal = cache is not None and not cache.static and mask is None
        if is_causal and q.shape[2] > 1:
            m = _masks.causal() if m is None else _masks.causal() & m
        mods = (_scores.alibi(_scores.alibi_slopes(self.num_heads)),) if self.alibi else ()
        res = attention(q, k, v, m, score=self.score, weight=self.weight, bias=bias, score_mods=mods,
                        dropout_p=self.dropout if self.training else 0.0, impl=self.impl if impl is None else impl,
                        return_weights=need_weights, options=self.impl_options if options is None else options)
        out, w = res if need_weights else (res, None)  # out (B, H, T, D), w (B, H, T, S)
        return merge_heads(out), w  # (B, T, H * D)

    def _rotate(self, q: Tensor, k: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """RoPE: queries and new keys sit at positions ``offset .. offset + L - 1``."""
        if self.rope is None:
            return q, k
        dev = q.device
        q = self.rope(q, torch.arange(offset, offset + q.shape[2], device=dev))
        k = self.rope(k, torch.arange(offset, offset + k.shape[2], device=dev))
        return q, k

    def _check_cache(self, cache: Any) -> None:
        if cache is None:
            return
        if not isinstance(cache, KVCache):
            raise AttnKitError(f"cache must be an attnkit.nn.KVCache; got {type(cache).__name__}")
        if cache.static and self.rope is not None:
            raise AttnKitError("a static (cross-attention) KVCache cannot be used with rope: rotary positions "
                               "apply to self-attention")

    # -- the PyTorch calling convention ---------------------------------------------------------
    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | Mask | None = None, average_attn_weights: bool = True,
                is_causal: bool | None = None, *, mask: Mask | Tensor | None = None,
                cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """Attend ``query`` to ``key``/``value`` (self-attention when they are omitted).

        Args:
            query: ``(B, T, E)``, ``(T, B, E)`` with ``batch_first=False``, or unbatched ``(T, E)``.
            key, value: ``(B, S, kdim)`` / ``(B, S, vdim)`` in the same layout (default: query).
            key_padding_mask: PyTorch's convention: ``(B, S)`` bool, True = *ignore* this key,
                or float, added.
            need_weights: return the weights too (the default, as in PyTorch); an implementation
                that cannot return them (e.g. ``impl="sdpa"``) needs ``need_weights=False``.
            attn_mask: PyTorch's convention: bool, True = *not allowed*, or float, added;
                ``(T, S)`` or ``(B * H, T, S)``. (An attnkit Mask is accepted too.)
            average_attn_weights: average the weights over heads.
            is_causal: a bottom-right causal mask (with ``attn_mask``, PyTorch's hint that it is
                causal). The default (None) is causal when a non-static ``cache`` is given and
                neither ``attn_mask`` nor ``mask`` is, else not.
            mask: attnkit's convention: a :class:`~attnkit.masks.Mask` or a bool tensor
                ``(T, S)`` / ``(B|1, H|1, T, S)``, True = *attend*; combined with the others.
            cache: a :class:`KVCache` for incremental decoding (see :meth:`attend`); a static
                cache (cross-attention) is filled on the first call and reused after.

        Returns:
            ``(out, weights)``: out in the input's layout; weights ``(B, T, S)`` averaged over
            heads, ``(B, H, T, S)`` with ``average_attn_weights=False``, or None when
            ``need_weights=False``. A query with no allowed key gets a zero output (PyTorch: NaN).
        """
        _tc.check_need_weights(need_weights, self.impl)
        self._check_cache(cache)
        has_extra = self.bias_k is not None or self.add_zero_attn
        if cache is not None and has_extra:
            raise AttnKitError("a KVCache cannot be used with add_bias_kv or add_zero_attn: the appended "
                               "keys would be cached at every step")
        x_q, unbatched = _tc.to_batch_first(query, "query", self.embed_dim, self.batch_first)
        if cache is not None and cache.static and not cache.is_empty:
            q, k, v = self._project_query(x_q), None, None
            lk = cache.length
        else:
            self_attention = (key is None or key is query) and (value is None or value is key)
            key = query if key is None else key
            value = key if value is None else value
            x_k, _ = _tc.to_batch_first(key, "key", self.kdim, self.batch_first)
            x_v, _ = _tc.to_batch_first(value, "value", self.vdim, self.batch_first)
            if x_k.shape[:2] != x_v.shape[:2] or x_k.shape[0] != x_q.shape[0]:
                raise ShapeError(f"key (B, S, kdim) {tuple(x_k.shape)} and value {tuple(x_v.shape)} must share "
                                 f"B and S, and B must match query {tuple(x_q.shape)}")
            q, k, v = self.project(x_q) if self_attention else self.project(x_q, x_k, x_v)
            lk = x_k.shape[1] + (0 if cache is None else cache.length)
        b, lq = x_q.shape[:2]
        if unbatched and key_padding_mask is not None and key_padding_mask.dim() == 1:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        if is_causal is None:
            is_causal = cache is not None and not cache.static and attn_mask is None and mask is None
        if not has_extra:
            _tc.warn_if_mask_inverted(attn_mask)
        m, bias = _tc.torch_masks_to_attnkit(attn_mask, key_padding_mask, batch=b, heads=self.num_heads, lq=lq,
                                             lk=lk, is_causal=is_causal and lq > 1, dtype=q.dtype)
        attnkit_mask = _as_mask(mask)
        if attnkit_mask is not None:
            m = attnkit_mask if m is None else m & attnkit_mask
        if has_extra:
            assert k is not None and v is not None
            k, v, m, bias = _tc.append_extra_keys(k, v, self.bias_k, self.bias_v, self.add_zero_attn, m, bias)
        out, w = self.attend(q, k, v, m, bias=bias, is_causal=False, cache=cache, need_weights=need_weights)
        out = self.o_proj(out)  # (B, T, E)
        if w is not None and average_attn_weights:
            w = w.mean(dim=1)  # (B, T, S)
        return _tc.from_batch_first(out, w, self.batch_first, unbatched)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}, impl={self.impl!r}, "
                f"score={self.score!r}, weight={self.weight!r}, alibi={self.alibi}"
                + (", fused_qkv=True" if self.qkv_proj is not None else "")
                + (", add_bias_kv=True" if self.bias_k is not None else "")
                + (", add_zero_attn=True" if self.add_zero_attn else ""))


def _check_projected(t: Any, name: str, width: int) -> None:
    if not isinstance(t, Tensor) or t.dim() != 3 or t.shape[-1] != width:
        got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ShapeError(f"attend takes projected {name} of shape (B, L, {width}); got {got}")


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
