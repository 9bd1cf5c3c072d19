"""all-MiniLM-L6-v2 for the text modes: one instance per process, one forward at a time.

The model is shared by every request; :data:`MODEL_LOCK` serialises its forwards, so concurrent
requests never interleave (each forward's weights come from its own observer in any case) and the
CPU is not oversubscribed.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAX_TOKENS", "Encoded", "minilm", "encode", "run_minilm", "MODEL_LOCK"]

MAX_TOKENS = 512  # the model's position limit: longer input is truncated, and the page says so

MODEL_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}


def minilm() -> tuple[Any, Any]:
    """``(model, tokenizer)``, loaded once per process."""
    with _LOAD_LOCK:
        if "model" not in _LOADED:
            from ...models import load_minilm

            _LOADED["model"], _LOADED["tokenizer"] = load_minilm(max_length=MAX_TOKENS)
        return _LOADED["model"], _LOADED["tokenizer"]


@dataclass(frozen=True)
class Encoded:
    """One input: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, ids ``(1, T)``, segment ids ``(1, T)``."""

    tokens: list[str]
    input_ids: Tensor
    token_type_ids: Tensor
    truncated: bool  # whether tokens were dropped to fit MAX_TOKENS


def _pieces(tok: Any, text: str) -> tuple[list[str], list[int], bool]:
    """The tokens and ids of ``[CLS] text [SEP]`` and whether ``text`` was cut at MAX_TOKENS."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = tok([text], max_length=MAX_TOKENS)["input_ids"][0].tolist()
        tokens = tok.tokenize(text, max_length=MAX_TOKENS)
    return tokens, ids, any("truncated" in str(w.message) for w in caught)


def encode(text: str, text_b: str | None = None) -> Encoded:
    """Tokenise one sentence or a pair, cutting the longer part first to fit :data:`MAX_TOKENS`."""
    _, tok = minilm()
    with MODEL_LOCK:  # warnings are caught per process: one tokenisation at a time
        ta, ia, cut_a = _pieces(tok, text)
        tb, ib, cut_b = _pieces(tok, text_b) if text_b else ([], [], False)
    cls_id, sep_id = ia[0], ia[-1]
    ta, ia, tb, ib = ta[1:-1], ia[1:-1], tb[1:-1], ib[1:-1]  # the words alone, without [CLS] / [SEP]
    room = MAX_TOKENS - 2 - (1 if text_b else 0)
    cut = cut_a or cut_b or len(ta) + len(tb) > room
    while len(ta) + len(tb) > room:  # drop from the longer part, as BERT's pair truncation does
        if len(ta) >= len(tb):
            ta, ia = ta[:-1], ia[:-1]
        else:
            tb, ib = tb[:-1], ib[:-1]
    tokens = ["[CLS]", *ta, "[SEP]", *([*tb, "[SEP]"] if text_b else [])]
    ids = [cls_id, *ia, sep_id, *([*ib, sep_id] if text_b else [])]
    types = [0] * (len(ta) + 2) + ([1] * (len(tb) + 1) if text_b else [])
    return Encoded(tokens, torch.tensor([ids]), torch.tensor([types]), cut)


def run_minilm(enc: Encoded, *, impl: str = "auto", mask: Any = None,
               options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """Run the model on ``enc``: every layer's weights ``(L, H, T, T)`` float32 and the
    normalised mean-pooled embedding ``(C,)`` (of the whole input)."""
    from ...interpret import capture_attention

    model, _ = minilm()
    am = torch.ones_like(enc.input_ids)
    with MODEL_LOCK, torch.inference_mode(), capture_attention() as cap:
        out = model(enc.input_ids, am, token_type_ids=enc.token_type_ids, impl=impl, mask=mask, options=options)
    h = out.last_hidden_state[0]  # (T, C)
    emb = torch.nn.functional.normalize(h.mean(0), dim=-1)  # (C,)
    return cap.stack()[:, 0].float(), emb
