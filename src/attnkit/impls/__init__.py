"""Built-in attention implementations, one module each. Importing this package registers them
(each module calls :func:`attnkit.registry.register_impl` at import time); ``attnkit`` imports it."""

from . import block_sparse, blockwise, linear, lsh, native, reference, sdpa  # noqa: F401  (native: built on first use)

__all__ = ["block_sparse", "blockwise", "linear", "lsh", "reference", "sdpa"]
