"""attnkit: attention mechanisms as four composable steps (project, score, weight, combine),
with interchangeable exact and approximate implementations behind one call.

>>> import torch, attnkit
>>> q = torch.randn(2, 4, 16, 32)
>>> out = attnkit.attention(q, q, q, mask=attnkit.masks.causal())
"""

from . import masks, nn, patterns, scores, weights
from .dispatch import DispatchReport, not_supported_reasons, use_impls
from .errors import AttnKitError, DTypeError, ShapeError, UnknownNameError, UnsupportedError
from .functional import attention, explain_dispatch, observe
from .registry import AttentionCall, ImplSpec, get_impl, impl_table, list_impls, register_impl

__version__ = "0.1.0"

__all__ = [
    "attention",
    "explain_dispatch",
    "observe",
    "masks",
    "scores",
    "weights",
    "patterns",
    "nn",
    "use_impls",
    "list_impls",
    "get_impl",
    "register_impl",
    "impl_table",
    "not_supported_reasons",
    "AttentionCall",
    "ImplSpec",
    "DispatchReport",
    "AttnKitError",
    "ShapeError",
    "DTypeError",
    "UnknownNameError",
    "UnsupportedError",
    "__version__",
]
