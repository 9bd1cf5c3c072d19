"""A reader for CTranslate2 model files (``model.bin``, format versions 1 to 6), without pickle.

Layout (little-endian)::

    u32 version
    str spec name            (version >= 2; "WhisperSpec")
    u32 spec revision        (version >= 2)
    u32 variable count
    per variable: str name, u8 rank, u32 dims[rank], u8 dtype (version >= 4; else u32 item size),
                  u32 byte count, bytes
    u32 alias count, per alias: str alias, str target          (version >= 3)

A ``str`` is a u16 byte count (with the trailing NUL) and the bytes. Every read is bounds-checked:
a truncated or corrupt file raises :class:`CT2FormatError` naming the byte offset where it failed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import AttnKitError

__all__ = ["CT2FormatError", "CT2File", "read_ct2", "parse_ct2"]

# dtype codes of format version >= 4
_DTYPES: dict[int, np.dtype | str] = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
                                      4: np.dtype("<f2"), 5: "bfloat16"}
_MAX_RANK = 8
_MAX_VARIABLES = 1_000_000


class CT2FormatError(AttnKitError):
    """The bytes are not a well-formed CTranslate2 model file (the message names the offset)."""


@dataclass
class CT2File:
    """A parsed model file: ``variables`` maps names to tensors (stored dtype; 0-d for scalars)."""

    version: int
    spec: str | None
    revision: int | None
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """A variable by name (aliases resolved); :class:`CT2FormatError` if absent."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise CT2FormatError(f"model file has no variable {name!r}; it has {len(self.variables)} variables, "
                                 f"e.g. {sorted(self.variables)[:3]}")
        return self.variables[target]


class _Cursor:
    def __init__(self, data: bytes | memoryview, where: str):
        self.data, self.pos, self.where = data, 0, where

    def fail(self, what: str, at: int | None = None) -> CT2FormatError:
        at = self.pos if at is None else at
        return CT2FormatError(f"{self.where}: {what} at byte offset {at} (file size {len(self.data)}); "
                              "the file is truncated or corrupt")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{what} needs {n} bytes but only {len(self.data) - self.pos} remain")
        out = memoryview(self.data)[self.pos: self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        start = self.pos
        n = self.unpack("H", f"length of {what}")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated", start)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8", start) from None


def parse_ct2(data: bytes | memoryview, where: str = "<bytes>") -> CT2File:
    """Parse the bytes of a CTranslate2 ``model.bin``; raises :class:`CT2FormatError` on any
    inconsistency (unknown version or dtype, a count or size running past the end, trailing bytes)."""
    cur = _Cursor(data, where)
    version = cur.unpack("I", "format version")
    if not 1 <= version <= 6:
        raise cur.fail(f"unsupported format version {version} (expected 1 to 6)", 0)
    spec = revision = None
    if version >= 2:
        spec = cur.string("spec name")
        revision = cur.unpack("I", "spec revision")
    count_at = cur.pos
    count = cur.unpack("I", "variable count")
    if count > _MAX_VARIABLES:
        raise cur.fail(f"implausible variable count {count}", count_at)
    out = CT2File(version, spec, revision)
    for i in range(count):
        start = cur.pos
        name = cur.string(f"name of variable {i}")
        rank = cur.unpack("B", f"rank of {name!r}")
        if rank > _MAX_RANK:
            raise cur.fail(f"variable {name!r} has rank {rank} (at most {_MAX_RANK} expected)", start)
        dims = [cur.unpack("I", f"dimension {d} of {name!r}") for d in range(rank)]
        code_at = cur.pos
        if version >= 4:
            code = cur.unpack("B", f"dtype of {name!r}")
            if code not in _DTYPES:
                raise cur.fail(f"variable {name!r} has unknown dtype code {code}", code_at)
            dtype = _DTYPES[code]
        else:
            item = cur.unpack("I", f"item size of {name!r}")
            dtype = {4: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2")}.get(item)
            if dtype is None:
                raise cur.fail(f"variable {name!r} has unknown item size {item}", code_at)
        nbytes_at = cur.pos
        nbytes = cur.unpack("I", f"byte count of {name!r}")
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        numel = int(np.prod(dims)) if dims else 1
        if nbytes != numel * itemsize:
            raise cur.fail(f"variable {name!r} of shape {tuple(dims)} declares {nbytes} bytes, expected "
                           f"{numel * itemsize}", nbytes_at)
        raw = cur.take(nbytes, f"data of {name!r}")
        if dtype == "bfloat16":
            t = (torch.frombuffer(bytearray(raw), dtype=torch.bfloat16) if nbytes
                 else torch.empty(0, dtype=torch.bfloat16))
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=dtype).copy())
        if name in out.variables:
            raise cur.fail(f"variable {name!r} appears twice", start)
        out.variables[name] = t.reshape(dims)
    if version >= 3:
        n_alias = cur.unpack("I", "alias count")
        for j in range(n_alias):
            alias = cur.string(f"alias {j}")
            target = cur.string(f"target of alias {alias!r}")
            if target not in out.variables:
                raise cur.fail(f"alias {alias!r} points to unknown variable {target!r}")
            out.aliases[alias] = target
    if cur.pos != len(data):
        raise cur.fail(f"{len(data) - cur.pos} unexpected bytes after the last record")
    return out


def read_ct2(path: str | Path) -> CT2File:
    """Read and parse a CTranslate2 ``model.bin`` (see :func:`parse_ct2`)."""
    p = Path(path)
    if not p.is_file():
        raise CT2FormatError(f"model file {str(p)!r} does not exist or is not a file")
    return parse_ct2(p.read_bytes(), str(p))
