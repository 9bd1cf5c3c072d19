"""Sentence encoders whose token states the review models read: frozen all-MiniLM-L6-v2, or
MiniLM adapted to movie-review sentiment on the sentence set.

* ``minilm``: all-MiniLM-L6-v2 as published (the default).
* ``minilm-sentft``: the same word embeddings, with all six transformer layers taken from a
  ``minilm-ft`` run (six layers fine-tuned with attention pooling) on the 4,000-sentence polarity set.
  The sentences are Rotten Tomatoes snippets, another corpus than the 1,500 reviews, so no review
  label reaches the encoder. It applies to the reviews only (on the sentences it would have seen
  the test folds).

``python -m attnkit.apps.sentiment.encoders`` trains that run (test fold 10, validation fold 1,
about 4 minutes on one thread; ``--run PATH`` takes an existing one) and saves its six layers in
``cache_dir("sentiment")/encoder-minilm-sentft.safetensors`` with where they came from in the
file's metadata. Feature caches made with it record the sha256 of that file and are refused when
it changes (:func:`encoder_digest`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ...errors import AttnKitError
from ..trainer import cache_dir

__all__ = ["ENCODERS", "DEFAULT_ENCODER", "ADAPTED", "encoder_path", "encoder_digest", "check_encoder",
           "load_encoder", "save_adapted", "adapt"]

DEFAULT_ENCODER = "minilm"
ADAPTED = "minilm-sentft"
ENCODERS = {DEFAULT_ENCODER: "frozen all-MiniLM-L6-v2",
            ADAPTED: "MiniLM with all 6 layers fine-tuned on the 4,000-sentence polarity set (minilm-ft, fold 10)"}
ADAPT_RUN = "runs/sentiment-adapt/sentences-minilm-ft"
MAKE = "python -m attnkit.apps.sentiment.encoders"


def check_encoder(encoder: str, data: str | None = None) -> str:
    """``encoder`` if it is known (and applies to ``data``); else an AttnKitError naming the choices."""
    if encoder not in ENCODERS:
        raise AttnKitError(f"--encoder {encoder!r} is not known; expected one of {', '.join(ENCODERS)}")
    if encoder != DEFAULT_ENCODER and data is not None and data != "reviews":
        raise AttnKitError(f"--encoder {encoder} applies to --data reviews only (it was trained on the sentences); "
                           f"got --data {data}")
    return encoder


def encoder_path(encoder: str) -> Path | None:
    """The saved layers of ``encoder`` (None for the published MiniLM)."""
    check_encoder(encoder)
    return None if encoder == DEFAULT_ENCODER else cache_dir("sentiment") / f"encoder-{encoder}.safetensors"


def encoder_digest(encoder: str) -> str:
    """The sha256 of the saved layers of ``encoder`` (``"published"`` for the published MiniLM)."""
    path = encoder_path(encoder)
    if path is None:
        return "published"
    if not path.is_file():
        raise AttnKitError(f"the {encoder} encoder is not in the cache ({path} is missing); expected it made by {MAKE}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


_LOADED: dict[tuple[str, int], Any] = {}


def load_encoder(encoder: str, max_length: int):
    """``(MiniLM SentenceEncoder, tokenizer)`` of ``encoder`` in eval mode, loaded once per process."""
    check_encoder(encoder)
    key = (encoder, max_length)
    if key not in _LOADED:
        from ...models import load_minilm

        model, tok = load_minilm(max_length=max_length)
        path = encoder_path(encoder)
        if path is not None:
            from safetensors.torch import load_file

            encoder_digest(encoder)  # a clear error when the file is missing
            state = load_file(str(path))
            missing, unexpected = model.bert.layers.load_state_dict(
                {k.removeprefix("layers."): v for k, v in state.items()}, strict=False)
            if missing or unexpected:
                raise AttnKitError(f"{path} does not hold MiniLM's six layers: missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}; delete it and run {MAKE}")
        _LOADED[key] = (model.eval(), tok)
    return _LOADED[key]


def save_adapted(run: str | Path) -> Path:
    """Save the six fine-tuned layers of the ``minilm-ft`` run ``run`` (sentences, all six layers)
    as the ``minilm-sentft`` encoder; returns the file."""
    from safetensors.torch import save_file

    from .loaded import load_run

    lr = load_run(run)
    if lr.kind != "minilm-ft" or lr.data != "sentences" or lr.model.config.tune_layers != 6:
        raise AttnKitError(f"{run} is a {lr.kind} run on {lr.data} (tune_layers "
                           f"{getattr(getattr(lr.model, 'config', None), 'tune_layers', None)}); expected minilm-ft "
                           f"on sentences with all 6 layers fine-tuned")
    results = lr.run / "results.json"
    acc = ""
    if results.is_file():
        from ..trainer import read_json

        acc = f"{read_json(results)['test']['accuracy']:.4f}"
    state = {f"layers.{k}": v.detach().clone().contiguous() for k, v in lr.model.layers.state_dict().items()}
    path = encoder_path(ADAPTED)
    assert path is not None
    save_file(state, str(path.with_suffix(".tmp")), metadata={"run": str(Path(run).resolve()),
                                                              "fold": str(lr.config["fold"]),
                                                              "sentence_test_accuracy": acc})
    path.with_suffix(".tmp").replace(path)
    _LOADED.clear()
    return path


def adapt(run: str | Path | None = None, *, seed: int = 0, log=print) -> Path:
    """Train the sentence ``minilm-ft`` run (unless ``run`` names a finished one) and save its layers."""
    if run is None:
        from .task import train

        run = ADAPT_RUN
        if not (Path(run) / "results.json").is_file():
            train(data="sentences", model="minilm-ft", fold=10, out=run, seed=seed, progress=False, pictures=False,
                  tune_layers=6, log=log)
    path = save_adapted(run)
    log(f"saved the {ADAPTED} encoder (layers of {run}) -> {path}")
    return path


if __name__ == "__main__":
    import argparse

    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description="make the minilm-sentft encoder (MiniLM fine-tuned on the sentences)")
    ap.add_argument("--run", default=None, help=f"an existing minilm-ft sentence run (default: train {ADAPT_RUN})")
    a = ap.parse_args()
    try:
        adapt(a.run)
    except AttnKitError as e:
        raise SystemExit(f"error: {e}") from None
