"""Built-in attention implementations, one module each. Importing this package registers them
(each module calls :func:`attnkit.registry.register_impl` at import time); ``attnkit`` imports it."""

from . import (  # noqa: F401  (native: built on first use; triton_block_sparse: imports Triton on first use)
    block_sparse,
    blockwise,
    linear,
    lsh,
    native,
    reference,
    sdpa,
    triton_block_sparse,
)

__all__ = ["block_sparse", "blockwise", "linear", "lsh", "reference", "sdpa", "triton_block_sparse"]
