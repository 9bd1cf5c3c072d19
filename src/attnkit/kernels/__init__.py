"""Native (C++) kernels, compiled on first use with :func:`torch.utils.cpp_extension.load` and cached.

Nothing is compiled when ``attnkit`` is imported: :func:`native_module` builds the extension the
first time a native implementation runs (one translation unit, ``-O3``, about a minute), into
``$ATTNKIT_CACHE/native/<torch version>-<source hash>`` (default ``~/.cache/attnkit``), and later
processes load the cached library. :func:`unavailable_reason` says, without building anything, why
the kernels cannot be used here (no C++ compiler, no ninja, ``ATTNKIT_NATIVE=0``, or the error of
an earlier failed build); the dispatcher shows it in ``attnkit.explain_dispatch``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["native_module", "native_ready", "unavailable_reason", "build_dir", "SOURCE"]

SOURCE = Path(__file__).with_name("native_attention.cpp")

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "module": the loaded extension, "error": why the build failed


def _source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def build_dir() -> Path:
    """Where the extension is built and cached (created on demand by :func:`native_module`)."""
    root = Path(os.environ.get("ATTNKIT_CACHE") or Path.home() / ".cache" / "attnkit")
    return root / "native" / f"torch{torch.__version__.split('+')[0]}-{_capability().lower()}-{_source_hash()}"


_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512",
               "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}


def _capability() -> str:
    """The vector instruction set ATen uses on this CPU (``AVX512``, ``AVX2`` or ``DEFAULT``)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older builds, other platforms
        return "DEFAULT"
    return cap if cap in _FLAGS else "DEFAULT"


def unavailable_reason() -> str | None:
    """Why the native kernels cannot run here, or None when they can (or have not been tried yet).
    Cheap: never compiles."""
    if os.environ.get("ATTNKIT_NATIVE", "1") == "0":
        return "disabled by the environment (ATTNKIT_NATIVE=0)"
    if "error" in _STATE:
        return f"the native kernel could not be built here: {_STATE['error']}"
    if "module" in _STATE:
        return None
    if not SOURCE.exists():
        return f"the kernel source {SOURCE.name} is missing from this installation"
    return _toolchain_reason(os.environ.get("CXX", "c++"))


@functools.cache
def _toolchain_reason(cxx: str) -> str | None:
    """Why the compiler or ninja is missing (None: both present); asked once per process, since
    looking for ninja starts a subprocess and dispatch asks on every call until the kernel is built."""
    if shutil.which(cxx) is None:
        return f"no C++ compiler found ({cxx!r} is not on PATH); the pure-PyTorch implementations run instead"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja), needed to build the native kernel"
    return None


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    path = build_dir()
    path.mkdir(parents=True, exist_ok=True)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        return load(name=f"attnkit_native_{_source_hash()}", sources=[str(SOURCE)], build_directory=str(path),
                    extra_cflags=["-O3", "-fopenmp", *_FLAGS.get(_capability(), [])], extra_ldflags=["-fopenmp"],
                    verbose=False)


def native_module() -> ModuleType:
    """The compiled extension, built on the first call (then cached on disk and in the process).

    Raises :class:`RuntimeError` with the reason when it is unavailable or the build fails; the
    failure is remembered, so :func:`unavailable_reason` reports it from then on."""
    mod = _STATE.get("module")
    if mod is not None:
        return mod  # type: ignore[return-value]
    with _LOCK:
        if "module" in _STATE:
            return _STATE["module"]  # type: ignore[return-value]
        why = unavailable_reason()
        if why is not None:
            raise RuntimeError(why)
        try:
            mod = _build()
        except Exception as exc:  # compiler or linker failure: remembered, reported by unavailable_reason
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error" in ln.lower() and not ln.startswith(("c++", "FAILED"))),
                         lines[0] if lines else type(exc).__name__)
            _STATE["error"] = f"{type(exc).__name__}: {first[:300]}"
            raise RuntimeError(unavailable_reason()) from exc
        _STATE["module"] = mod
        return mod


def native_ready() -> bool:
    """Whether the extension can be used now: nothing rules it out and it loads (built on first
    use; a failed build is remembered and reported by :func:`unavailable_reason`)."""
    if unavailable_reason() is not None:
        return False
    try:
        native_module()
    except RuntimeError:
        return False
    return True
