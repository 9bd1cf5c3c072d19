"""Frozen all-MiniLM-L6-v2 token states of a data set, computed once and cached.

Every text is cut into units (a sentence of the ``sentences`` set is one unit; a review is its
sentences, see :func:`~attnkit.apps.sentiment.data.split_sentences`), each unit is tokenised
(``[CLS] ... [SEP]``, at most :data:`MAX_TOKENS` tokens) and run through MiniLM on attnkit. The
cache ``cache_dir("sentiment")/<data>-minilm.safetensors`` holds, flat over all tokens:

* ``ids (N_tok,)`` WordPiece ids, ``states (N_tok, 384)`` last-layer states (float16);
* ``mid (N_tok, 384)``: for ``sentences`` only, the output of layer 4 (the input of the top two
  layers, which the fine-tuned model trains on top of);
* ``unit_offsets (N_unit + 1,)`` token offsets of each unit, ``text_offsets (N_text + 1,)`` unit
  offsets of each text.

Reviews are encoded in chunks (each one file, so an interrupted run resumes), then joined.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import cache_dir
from .data import DATASETS, Example, load, split_sentences

__all__ = ["MAX_TOKENS", "MAX_SENTENCES", "MID_LAYER", "Features", "units_of", "encode_units", "token_ids", "features",
           "feature_path"]

MAX_TOKENS = {"sentences": 128, "reviews": 48}  # per unit, [CLS] and [SEP] included
MAX_SENTENCES = 48  # per review (first 24 and last 24 when longer)
MID_LAYER = 4  # cached hidden state index for fine-tuning the top layers (6 - 4 = 2 layers)
_CHUNK = 250  # reviews per cache chunk


@dataclass
class Features:
    """The cached token states of one data set (see the module docstring)."""

    ids: Tensor  # (N_tok,) int32
    states: Tensor  # (N_tok, C) float16
    mid: Tensor | None  # (N_tok, C) float16 or None
    unit_offsets: Tensor  # (N_unit + 1,) int64
    text_offsets: Tensor  # (N_text + 1,) int64

    @property
    def n_texts(self) -> int:
        return len(self.text_offsets) - 1

    def units(self, text: int) -> range:
        """The unit indices of text ``text``."""
        return range(int(self.text_offsets[text]), int(self.text_offsets[text + 1]))

    def tokens(self, unit: int) -> slice:
        """The token slice of unit ``unit``."""
        return slice(int(self.unit_offsets[unit]), int(self.unit_offsets[unit + 1]))


def units_of(data: str, text: str) -> list[str]:
    """The units one text is cut into for ``data``."""
    return [text] if data == "sentences" else split_sentences(text, MAX_SENTENCES)


def feature_path(data: str) -> Path:
    return cache_dir("sentiment") / f"{data}-minilm.safetensors"


def encode_units(model, tokenizer, units: list[str], max_tokens: int, *, mid: bool = False,
                 batch_size: int = 64) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """Per unit: ids ``(T_i,)``, last-layer states ``(T_i, C)`` and (``mid``) layer-4 states, in input order."""
    import warnings

    order = sorted(range(len(units)), key=lambda i: -len(units[i]))
    ids: list[Tensor | None] = [None] * len(units)
    last: list[Tensor | None] = [None] * len(units)
    middle: list[Tensor | None] = [None] * len(units)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of long units is by design
        for s in range(0, len(units), batch_size):
            idx = order[s:s + batch_size]
            b = tokenizer([units[i] for i in idx], max_length=max_tokens)
            out = model.bert(b["input_ids"], b["attention_mask"], unpad=True, output_hidden_states=mid)
            for j, i in enumerate(idx):
                n = int(b["attention_mask"][j].sum())
                ids[i] = b["input_ids"][j, :n].to(torch.int32)
                last[i] = out.last_hidden_state[j, :n].to(torch.float16)
                if mid:
                    middle[i] = out.hidden_states[MID_LAYER][j, :n].to(torch.float16)
    return ids, last, (middle if mid else None)  # type: ignore[return-value]


def token_ids(tokenizer, units: list[str], max_tokens: int) -> list[Tensor]:
    """Per unit its WordPiece ids ``(T_i,)`` int32 (``[CLS] ... [SEP]``), without running the model."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of long units is by design
        b = tokenizer(units, max_length=max_tokens)
    return [row[:int(n)].to(torch.int32) for row, n in zip(b["input_ids"], b["attention_mask"].sum(1))]


def _encode_texts(data: str, examples: list[Example], model, tokenizer) -> dict[str, Tensor]:
    units_per_text = [units_of(data, e.text) for e in examples]
    flat = [u for us in units_per_text for u in us]
    ids, last, middle = encode_units(model, tokenizer, flat, MAX_TOKENS[data], mid=data == "sentences")
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    out = {"ids": torch.cat(ids), "states": torch.cat(last),
           "unit_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
           "text_offsets": torch.cat([torch.zeros(1, dtype=torch.int64),
                                      torch.tensor([len(u) for u in units_per_text]).cumsum(0)])}
    if middle is not None:
        out["mid"] = torch.cat(middle)
    return out


def _join(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    out = {k: torch.cat([p[k] for p in parts]) for k in ("ids", "states") + (("mid",) if "mid" in parts[0] else ())}
    unit_off, text_off = [torch.zeros(1, dtype=torch.int64)], [torch.zeros(1, dtype=torch.int64)]
    tok_base = unit_base = 0
    for p in parts:
        unit_off.append(p["unit_offsets"][1:] + tok_base)
        text_off.append(p["text_offsets"][1:] + unit_base)
        tok_base += int(p["unit_offsets"][-1])
        unit_base += int(p["text_offsets"][-1])
    out["unit_offsets"], out["text_offsets"] = torch.cat(unit_off), torch.cat(text_off)
    return out


_memo: dict[str, Features] = {}


def features(data: str, *, log: Callable[[str], None] = print, chunks: int | None = None) -> Features:
    """The cached frozen-MiniLM states of ``data``, encoding them first if the cache is missing
    (sentences: about 2 minutes on one thread; reviews: about 15, in resumable chunks).
    ``chunks`` stops after encoding that many new review chunks (for splitting the work)."""
    from safetensors.torch import load_file, save_file

    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    if data in _memo:
        return _memo[data]
    path = feature_path(data)
    if not path.is_file():
        from ...models import load_minilm

        examples = load(data)
        model, tok = load_minilm(max_length=MAX_TOKENS[data])
        step = len(examples) if data == "sentences" else _CHUNK
        parts, done_now = [], 0
        for start in range(0, len(examples), step):
            part = path.with_name(f"{path.stem}.part{start // step}.safetensors")
            if not part.is_file():
                if chunks is not None and done_now >= chunks:
                    raise AttnKitError(f"stopped after {chunks} new chunk(s) of {data}; run again to continue")
                t0 = time.perf_counter()
                tensors = _encode_texts(data, examples[start:start + step], model, tok)
                save_file(tensors, str(part.with_suffix(".tmp")))
                part.with_suffix(".tmp").replace(part)
                done_now += 1
                log(f"encoded {data} {start}..{start + step - 1} with frozen MiniLM: "
                    f"{len(tensors['ids'])} tokens in {time.perf_counter() - t0:.0f} s")
            parts.append(load_file(str(part)))
        save_file(_join(parts), str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").replace(path)
        for start in range(0, len(examples), step):
            path.with_name(f"{path.stem}.part{start // step}.safetensors").unlink(missing_ok=True)
    t = load_file(str(path))
    feats = Features(t["ids"], t["states"], t.get("mid"), t["unit_offsets"], t["text_offsets"])
    if feats.n_texts != len(load(data)):
        raise AttnKitError(f"{path} holds {feats.n_texts} texts; expected {len(load(data))} (delete it to re-encode)")
    _memo[data] = feats
    return feats


if __name__ == "__main__":
    import argparse

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description="encode a data set with frozen MiniLM into the cache")
    ap.add_argument("data", choices=DATASETS)
    ap.add_argument("--chunks", type=int, default=None, help="reviews: encode at most this many new chunks")
    a = ap.parse_args()
    f = features(a.data, chunks=a.chunks)
    print(f"{a.data}: {f.n_texts} texts, {len(f.unit_offsets) - 1} units, {len(f.ids)} tokens -> "
          f"{feature_path(a.data)}")
