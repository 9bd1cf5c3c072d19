"""Frozen all-MiniLM-L6-v2 token states of a data set, computed once and cached.

Every text is cut into units (a sentence of the ``sentences`` set is one unit; a review is its
sentences, see :func:`~attnkit.apps.sentiment.data.split_sentences`), each unit is tokenised
(``[CLS] ... [SEP]``, at most :data:`MAX_TOKENS` tokens) and run through MiniLM on attnkit. The
cache ``cache_dir("sentiment")/<data>-minilm.safetensors`` holds, flat over all tokens:

* ``ids (N_tok,)`` WordPiece ids, ``states (N_tok, 384)`` last-layer states (float16);
* ``mid (N_tok, 384)`` and ``mid_layer (1,)``: for ``sentences`` only, the hidden state
  :data:`MID_LAYER` (the output of layer 4, the input of the top two layers, which the fine-tuned
  model trains on top of by default) and the index of that hidden state;
* ``unit_offsets (N_unit + 1,)`` token offsets of each unit, ``text_offsets (N_text + 1,)`` unit
  offsets of each text.

Reviews are encoded in chunks (each one file, so an interrupted run resumes), then joined.

Fine-tuning another number of top layers reads another hidden state (index ``6 - tune_layers``;
index 0 is the embedding output): :func:`features` with ``layer=`` swaps ``mid`` for that state,
cached per layer (all missing layers in one pass) in ``<data>-minilm-layer<L>.safetensors``
(``mid`` and ``mid_layer``). Every cache records the layer it holds and is refused when asked for
another.

``encoder=`` (reviews only) reads the states of another encoder of :mod:`.encoders` (the MiniLM
adapted on the sentence set, ``minilm-sentft``), cached in ``<data>-<encoder>.safetensors``; its
chunks and cache record the sha256 of the encoder's layers and are refused once they change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import cache_dir
from .data import DATASETS, Example, load, split_sentences
from .encoders import DEFAULT_ENCODER, check_encoder, encoder_digest, load_encoder

__all__ = ["MAX_TOKENS", "MAX_SENTENCES", "LAYERS", "MID_LAYER", "Features", "mid_layer_of", "units_of",
           "encode_units", "token_ids", "features", "feature_path", "layer_path"]

MAX_TOKENS = {"sentences": 128, "reviews": 48}  # per unit, [CLS] and [SEP] included
MAX_SENTENCES = 48  # per review (first 24 and last 24 when longer)
LAYERS = 6  # transformer layers of all-MiniLM-L6-v2
MID_LAYER = 4  # hidden state cached with the last-layer states: the input of the default 2 fine-tuned layers
_CHUNK = 250  # reviews per cache chunk


@dataclass
class Features:
    """The cached token states of one data set (see the module docstring)."""

    ids: Tensor  # (N_tok,) int32
    states: Tensor  # (N_tok, C) float16
    mid: Tensor | None  # (N_tok, C) float16 or None
    unit_offsets: Tensor  # (N_unit + 1,) int64
    text_offsets: Tensor  # (N_text + 1,) int64
    mid_layer: int | None = None  # the hidden-state index ``mid`` holds (0: embedding output)

    @property
    def n_texts(self) -> int:
        return len(self.text_offsets) - 1

    def units(self, text: int) -> range:
        """The unit indices of text ``text``."""
        return range(int(self.text_offsets[text]), int(self.text_offsets[text + 1]))

    def tokens(self, unit: int) -> slice:
        """The token slice of unit ``unit``."""
        return slice(int(self.unit_offsets[unit]), int(self.unit_offsets[unit + 1]))


def mid_layer_of(tune_layers: int) -> int:
    """The hidden-state index under the top ``tune_layers`` layers (``6 - tune_layers``)."""
    if isinstance(tune_layers, bool) or not isinstance(tune_layers, int) or not 1 <= tune_layers <= LAYERS:
        raise AttnKitError(f"tune_layers must be an int from 1 to {LAYERS}; got {tune_layers!r}")
    return LAYERS - tune_layers


def _check_layer(layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < LAYERS:
        raise AttnKitError(f"layer must be a hidden-state index from 0 to {LAYERS - 1}; got {layer!r}")
    return layer


def units_of(data: str, text: str) -> list[str]:
    """The units one text is cut into for ``data``."""
    return [text] if data == "sentences" else split_sentences(text, MAX_SENTENCES)


def feature_path(data: str, encoder: str = DEFAULT_ENCODER) -> Path:
    """The cache of the last-layer states of ``data`` under ``encoder`` (see :mod:`.encoders`)."""
    return cache_dir("sentiment") / f"{data}-{check_encoder(encoder, data)}.safetensors"


def layer_path(data: str, layer: int) -> Path:
    """The cache of hidden state ``layer`` of ``data`` (other than the one in :func:`feature_path`)."""
    return cache_dir("sentiment") / f"{data}-minilm-layer{_check_layer(layer)}.safetensors"


def encode_units(model, tokenizer, units: list[str], max_tokens: int, *, mid: bool = False,
                 batch_size: int = 64, layer: int = MID_LAYER
                 ) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """Per unit: ids ``(T_i,)``, last-layer states ``(T_i, C)`` and (``mid``) the states of hidden
    state ``layer`` (0: embedding output, 6: last layer), in input order."""
    import warnings

    if mid and (isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= LAYERS):
        raise AttnKitError(f"layer must be a hidden-state index from 0 to {LAYERS}; got {layer!r}")
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
                    middle[i] = out.hidden_states[layer][j, :n].to(torch.float16)
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
        out["mid_layer"] = torch.tensor([MID_LAYER])
    return out


def _join(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    out = {k: torch.cat([p[k] for p in parts]) for k in ("ids", "states") + (("mid",) if "mid" in parts[0] else ())}
    if "mid_layer" in parts[0]:
        out["mid_layer"] = parts[0]["mid_layer"]
    unit_off, text_off = [torch.zeros(1, dtype=torch.int64)], [torch.zeros(1, dtype=torch.int64)]
    tok_base = unit_base = 0
    for p in parts:
        unit_off.append(p["unit_offsets"][1:] + tok_base)
        text_off.append(p["text_offsets"][1:] + unit_base)
        tok_base += int(p["unit_offsets"][-1])
        unit_base += int(p["text_offsets"][-1])
    out["unit_offsets"], out["text_offsets"] = torch.cat(unit_off), torch.cat(text_off)
    return out


_memo: dict[tuple[str, int | None, str], Features] = {}


def _check_made_by(path: Path, encoder: str, digest: str) -> None:
    """Refuse a cache file written with another encoder (or another version of it)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if encoder == DEFAULT_ENCODER and not meta:
        return  # caches of the published MiniLM from before caches recorded their encoder
    if meta.get("encoder") != encoder or meta.get("encoder_sha256") != digest:
        raise AttnKitError(f"{path} holds states of encoder {meta.get('encoder')!r} "
                           f"(sha256 {meta.get('encoder_sha256', '?')[:12]}); expected {encoder!r} (sha256 "
                           f"{digest[:12]}): delete it to re-encode")


def _stored_layer(t: dict[str, Tensor], path: Path) -> int | None:
    """The hidden-state index a cache file records for its ``mid`` (None: it holds no ``mid``)."""
    if "mid" not in t:
        return None
    if "mid_layer" not in t:
        raise AttnKitError(f"{path} holds intermediate states without the layer they come from; delete it to "
                           f"re-encode (python -m attnkit.apps.sentiment.features sentences)")
    return int(t["mid_layer"].reshape(-1)[0])


def _record_legacy_layer(path: Path, t: dict[str, Tensor]) -> None:
    """Give a cache written before caches recorded their layer its ``mid_layer``, after checking on a
    few units that its ``mid`` is the output of layer :data:`MID_LAYER` (refused otherwise)."""
    from safetensors.torch import save_file

    model, tok = load_encoder(DEFAULT_ENCODER, MAX_TOKENS["sentences"])
    examples = load("sentences")
    n = 8
    _, _, middle = encode_units(model, tok, [e.text for e in examples[:n]], MAX_TOKENS["sentences"], mid=True)
    stored = t["mid"][: int(t["unit_offsets"][n])].float()
    fresh = torch.cat(middle).float()  # type: ignore[arg-type]
    if stored.shape != fresh.shape or not torch.allclose(stored, fresh, atol=2e-2, rtol=1e-2):
        raise AttnKitError(f"{path} holds intermediate states that are not the output of layer {MID_LAYER}; "
                           f"delete it to re-encode")
    t["mid_layer"] = torch.tensor([MID_LAYER])
    save_file(t, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)


def _encode_layers(data: str, base: Features, log: Callable[[str], None]) -> None:
    """Write the cache of every hidden state 0..5 but :data:`MID_LAYER` that is missing, in one pass
    of MiniLM over ``data`` (its tokens checked against ``base``'s)."""
    import warnings

    from safetensors.torch import save_file

    layers = [k for k in range(LAYERS) if k != MID_LAYER and not layer_path(data, k).is_file()]
    t0 = time.perf_counter()
    model, tok = load_encoder(DEFAULT_ENCODER, MAX_TOKENS[data])
    flat = [u for e in load(data) for u in units_of(data, e.text)]
    order = sorted(range(len(flat)), key=lambda i: -len(flat[i]))
    ids: list[Tensor] = [torch.zeros(0)] * len(flat)
    per_layer: dict[int, list[Tensor]] = {k: [torch.zeros(0)] * len(flat) for k in layers}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of long units is by design
        for s in range(0, len(flat), 64):
            idx = order[s:s + 64]
            b = tok([flat[i] for i in idx], max_length=MAX_TOKENS[data])
            out = model.bert(b["input_ids"], b["attention_mask"], unpad=True, output_hidden_states=True)
            for j, i in enumerate(idx):
                n = int(b["attention_mask"][j].sum())
                ids[i] = b["input_ids"][j, :n].to(torch.int32)
                for k in layers:
                    per_layer[k][i] = out.hidden_states[k][j, :n].to(torch.float16)
    if not torch.equal(torch.cat(ids), base.ids):
        raise AttnKitError(f"the tokens of {data} differ from those in {feature_path(data)}; delete the caches")
    for k in layers:
        path = layer_path(data, k)
        save_file({"mid": torch.cat(per_layer[k]), "mid_layer": torch.tensor([k])}, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").replace(path)
    log(f"encoded hidden states {layers} of {data} with frozen MiniLM in {time.perf_counter() - t0:.0f} s")


def features(data: str, *, layer: int | None = None, log: Callable[[str], None] = print,
             chunks: int | None = None, encoder: str = DEFAULT_ENCODER) -> Features:
    """The cached frozen-MiniLM states of ``data``, encoding them first if the cache is missing
    (sentences: about 2 minutes on one thread; reviews: about 15, in resumable chunks).
    ``layer`` (sentences only) makes ``mid`` hidden state ``layer`` (0: embedding output; default
    :data:`MID_LAYER`), encoded once into its own cache. ``chunks`` stops after encoding that many
    new review chunks (for splitting the work). ``encoder`` (reviews only; see :mod:`.encoders`)
    reads the states of another encoder than the published MiniLM."""
    from safetensors.torch import load_file, save_file

    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    check_encoder(encoder, data)
    if layer is not None and encoder != DEFAULT_ENCODER:
        raise AttnKitError(f"layer={layer} applies to the published MiniLM only; got encoder {encoder!r}")
    if layer is not None:
        _check_layer(layer)
        if data != "sentences":
            raise AttnKitError(f"layer={layer} applies to data 'sentences' only; got {data!r}")
    if layer is not None and layer != MID_LAYER:
        if (data, layer, encoder) in _memo:
            return _memo[(data, layer, encoder)]
        base = features(data, log=log)
        path = layer_path(data, layer)
        if not path.is_file():
            _encode_layers(data, base, log)
        t = load_file(str(path))
        got = _stored_layer(t, path)
        if got != layer or t["mid"].shape != base.states.shape:
            raise AttnKitError(f"{path} holds hidden state {got} of shape {tuple(t['mid'].shape)}; expected hidden "
                               f"state {layer} of shape {tuple(base.states.shape)} (delete it to re-encode)")
        feats = replace(base, mid=t["mid"], mid_layer=layer)
        _memo[(data, layer, encoder)] = feats
        return feats
    if (data, None, encoder) in _memo:
        return _memo[(data, None, encoder)]
    path = feature_path(data, encoder)
    digest = encoder_digest(encoder)
    made_by = {} if encoder == DEFAULT_ENCODER else {"encoder": encoder, "encoder_sha256": digest}
    if not path.is_file():
        examples = load(data)
        model, tok = load_encoder(encoder, MAX_TOKENS[data])
        step = len(examples) if data == "sentences" else _CHUNK
        parts, done_now = [], 0
        for start in range(0, len(examples), step):
            part = path.with_name(f"{path.stem}.part{start // step}.safetensors")
            if not part.is_file():
                if chunks is not None and done_now >= chunks:
                    raise AttnKitError(f"stopped after {chunks} new chunk(s) of {data}; run again to continue")
                t0 = time.perf_counter()
                tensors = _encode_texts(data, examples[start:start + step], model, tok)
                save_file(tensors, str(part.with_suffix(".tmp")), metadata=made_by or None)
                part.with_suffix(".tmp").replace(part)
                done_now += 1
                log(f"encoded {data} {start}..{start + step - 1} with {encoder}: "
                    f"{len(tensors['ids'])} tokens in {time.perf_counter() - t0:.0f} s")
            _check_made_by(part, encoder, digest)
            parts.append(load_file(str(part)))
        save_file(_join(parts), str(path.with_suffix(".tmp")), metadata=made_by or None)
        path.with_suffix(".tmp").replace(path)
        for start in range(0, len(examples), step):
            path.with_name(f"{path.stem}.part{start // step}.safetensors").unlink(missing_ok=True)
    _check_made_by(path, encoder, digest)
    t = load_file(str(path))
    if "mid" in t and "mid_layer" not in t:
        _record_legacy_layer(path, t)
    mid_layer = _stored_layer(t, path)
    if mid_layer is not None and mid_layer != MID_LAYER:
        raise AttnKitError(f"{path} holds hidden state {mid_layer}; expected {MID_LAYER} (delete it to re-encode)")
    feats = Features(t["ids"], t["states"], t.get("mid"), t["unit_offsets"], t["text_offsets"], mid_layer)
    if feats.n_texts != len(load(data)):
        raise AttnKitError(f"{path} holds {feats.n_texts} texts; expected {len(load(data))} (delete it to re-encode)")
    _memo[(data, None, encoder)] = feats
    if mid_layer is not None:
        _memo[(data, mid_layer, encoder)] = feats
    return feats


if __name__ == "__main__":
    import argparse

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description="encode a data set with frozen MiniLM into the cache")
    ap.add_argument("data", choices=DATASETS)
    ap.add_argument("--chunks", type=int, default=None, help="reviews: encode at most this many new chunks")
    ap.add_argument("--layer", type=int, default=None, help="sentences: also cache this hidden state (0..5)")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER, help="reviews: minilm (default) or minilm-sentft")
    a = ap.parse_args()
    try:
        f = features(a.data, chunks=a.chunks, layer=a.layer, encoder=a.encoder)
    except AttnKitError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{a.data}: {f.n_texts} texts, {len(f.unit_offsets) - 1} units, {len(f.ids)} tokens -> "
          f"{feature_path(a.data, a.encoder)}")
