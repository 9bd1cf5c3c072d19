"""attnkit: attention mechanisms as four composable steps (project, score, weight, combine),
with interchangeable exact and approximate implementations behind one call.

>>> import torch, attnkit
>>> q = torch.randn(2, 4, 16, 32)
>>> out = attnkit.attention(q, q, q, mask=attnkit.masks.causal())
"""

import sys as _sys

from . import (
    impls,  # noqa: F401  (importing it registers the built-in implementations)
    masks,
    nn,
    scores,
    weights,
)
from .call import AttentionCall
from .dispatch import DispatchReport, not_supported_reasons, use_impl, use_impls
from .errors import AttnKitError, DTypeError, ShapeError, UnknownNameError, UnsupportedError
from .functional import attention, explain_dispatch, observe
from .masks import patterns
from .merge import merge_partials
from .registry import AttnResult, ImplSpec, get_impl, impl_table, list_impls, register_impl

# ``attnkit.masks.patterns`` moved to ``attnkit.masks.patterns``; the old import path stays for a release
_sys.modules[f"{__name__}.patterns"] = patterns

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
    "merge_partials",
    "use_impl",
    "use_impls",
    "AttnResult",
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
