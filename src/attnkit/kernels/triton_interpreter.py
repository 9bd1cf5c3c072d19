"""Triton's interpreter (``TRITON_INTERPRET=1``, kernels on CPU tensors, what the tests use):
two fixes of it, applied once by every kernel module at import, in interpreter mode only."""

from __future__ import annotations

import triton.language as tl

from .triton_plan import interpreting

__all__ = ["apply_fixes"]


def apply_fixes() -> None:
    """Apply the fixes when Triton runs in its interpreter (compiled kernels are untouched)."""
    if interpreting():
        _fixes()


def _fixes() -> None:
    """Two fixes of Triton's interpreter (CPU only; compiled kernels are untouched): a loaded
    scalar used as a loop bound goes through ``int(array)``, which NumPy 2.4 refuses for a
    1-element array (read its one element instead); and ``tl.dot`` of bfloat16 operands
    multiplies their raw 16-bit patterns (convert them to float32 first)."""
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "reads_one_element", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched.reads_one_element = True
    interpreter._patch_lang_tensor = patched

    dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(x):
            if x.dtype.scalar == tl.bfloat16:
                data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
                return interpreter.TensorHandle(data, tl.float32)
            return x
        return dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot
