"""attnkit inside Hugging Face ``transformers`` models (the ``[hf]`` extra).

:func:`register` adds attnkit to transformers' attention-function interface *and* its mask
interface (without a mask builder transformers passes ``attention_mask=None`` and padding would
be attended), so any model that supports ``attn_implementation`` runs on attnkit::

    from attnkit.integrations import hf
    hf.register()                                   # name "attnkit", impl="auto"
    model = AutoModel.from_pretrained(path, attn_implementation="attnkit")
    model(**batch)                                  # attention runs in attnkit.attention
    model(**batch, attnkit_impl="blockwise")        # choose the implementation per call
    with attnkit.use_impl("reference"):             # ... or for a block (as everywhere in attnkit)
        model(**batch)
    hf.register("attnkit_lsh", impl="lsh", options={...})   # or a name per configuration

Shapes at the boundary: transformers passes ``query (B, H, T, D)``, ``key/value (B, Hkv, S, D)``
and expects ``(B, T, H, D)`` back, plus the weights ``(B, H, T, S)`` when ``output_attentions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .. import masks as _masks
from ..dispatch import use_impl
from ..errors import AttnKitError, DTypeError
from ..functional import attention
from ..masks import Mask
from ..registry import get_impl

__all__ = ["register", "use_impl", "attnkit_attention_forward", "to_attnkit_mask", "DEFAULT_NAME"]

DEFAULT_NAME = "attnkit"
_CONFIGS: dict[str, dict[str, Any]] = {}
# ``hf.use_impl`` is :func:`attnkit.use_impl` (the one way to choose an implementation), kept here
# under its former name for one release


def to_attnkit_mask(attention_mask: Tensor | None) -> tuple[Mask | None, Tensor | None]:
    """Translate transformers' 4-D mask into ``(mask, bias)`` for :func:`attnkit.attention`.

    A boolean ``(B, 1, T, S)`` mask (True = attend) that is the same for every query becomes a
    key-padding mask (which block-skipping implementations read analytically); any other boolean
    mask stays dense. A float mask is an additive bias.
    """
    if attention_mask is None:
        return None, None
    if not isinstance(attention_mask, Tensor):
        raise DTypeError(f"attention_mask must be a tensor or None; got {type(attention_mask).__name__} "
                         "(register attnkit's mask builder with attnkit.integrations.hf.register)")
    if attention_mask.dtype != torch.bool:
        return None, attention_mask
    m = attention_mask
    if m.dim() == 4 and m.shape[1] == 1 and bool((m == m[:, :, :1, :]).all()):
        keep = m[:, 0, 0, :]  # (B, S)
        return (None if bool(keep.all()) else _masks.from_key_padding(keep)), None
    return _masks.from_tensor(m), None


def attnkit_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                              *, _name: str = DEFAULT_NAME, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """The transformers attention-function signature on top of :func:`attnkit.attention`."""
    cfg = _CONFIGS.get(_name, {})
    impl = kwargs.get("attnkit_impl") or cfg.get("impl", "auto")  # "auto" follows attnkit.use_impl blocks
    mask, bias = to_attnkit_mask(attention_mask)
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    if is_causal and attention_mask is None and query.shape[2] > 1:
        mask = _masks.causal()
    extra = cfg.get("mask")
    if extra is not None:
        mask = extra if mask is None else mask & extra
    if kwargs.get("softcap") is not None:
        raise AttnKitError("softcap is not supported through the transformers interface; got "
                           f"softcap={kwargs['softcap']}")
    want_weights = bool(kwargs.get("output_attentions", False))
    res = attention(query, key, value, mask, scale=scaling, bias=bias,
                    dropout_p=dropout if module.training else 0.0, impl=impl, return_weights=want_weights,
                    options=cfg.get("options"))
    out, weights = res if want_weights else (res, None)  # (B, H, T, D), (B, H, T, S) | None
    return out.transpose(1, 2).contiguous(), weights  # (B, T, H, D)


def register(name: str = DEFAULT_NAME, *, impl: str = "auto", mask: Mask | None = None,
             options: Mapping[str, Any] | None = None) -> str:
    """Register attnkit under ``name`` in ``transformers.AttentionInterface`` and, with the boolean
    ``sdpa_mask`` builder, in ``transformers.masking_utils.AttentionMaskInterface``. ``impl``,
    ``mask`` (combined with the model's mask) and ``options`` apply to every call of models
    loaded with ``attn_implementation=name``. Registering a name again replaces its settings.
    Returns ``name``."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AttnKitError("the Hugging Face integration needs transformers: pip install 'attnkit[hf]'") from exc
    if not isinstance(name, str) or not name.isidentifier():
        raise AttnKitError(f"name must be an identifier-like str (letters, digits, _); got {name!r}")
    if impl != "auto":
        get_impl(impl)  # raises UnknownNameError listing the valid names
    _CONFIGS[name] = {"impl": impl, "mask": mask, "options": dict(options) if options else None}

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return attnkit_attention_forward(module, query, key, value, attention_mask, scaling, dropout,
                                         _name=name, **kwargs)

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
