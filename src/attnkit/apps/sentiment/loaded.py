"""A finished sentiment run: loading it (any model kind: attention, GRU, logistic regression on
pooled states, lexical), the prediction for new text with its highlighted tokens, and the checks
on that text.

Shape legend: B texts, T tokens, S sentences, C MiniLM width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import AttnKitError
from ..trainer import RunFolder, load_weights
from .batches import pad_rows, review_batch
from .encoders import DEFAULT_ENCODER, load_encoder
from .features import MAX_TOKENS, encode_units, token_ids, units_of
from .models import FUSION_MODELS, LEXICAL_MODELS, SKLEARN_MODELS, ModelConfig, build_model, input_kind
from .probes import LinearProbe

__all__ = ["TASK", "MAX_WORDS", "Prediction", "LoadedRun", "load_run", "check_text"]

TASK = "sentiment"
MAX_WORDS = {"sentences": 100, "reviews": 2500}  # longest text classify accepts


@dataclass
class Prediction:
    """One classified text: its label, P(label), and the tokens (per unit) with their weights."""

    label: str
    probability: float
    units: list[list[str]]  # tokens of each unit (a sentence of a review), [CLS]/[SEP] included
    token_weights: list[list[float]] | None  # attention over each unit's tokens (None: no attention)
    unit_weights: list[float] | None  # han: attention over the sentences


class LoadedRun:
    """A trained run: its configuration and model, and :meth:`predict` for new text."""

    def __init__(self, run: RunFolder, config: dict[str, Any], model: nn.Module):
        self.run, self.config, self.model = run, config, model
        self.kind: str = config["model"]["kind"]
        self.data: str = config["data"]
        self.lexical = None  # han-lex, minilm-ft-lex: the lexical model whose score it reads
        if self.kind in FUSION_MODELS:
            from .lexical import LexicalModel

            self.lexical = LexicalModel.load(run / "lexical")

    def lex_scores(self, texts: Sequence[str]) -> Tensor:
        """``han-lex``, ``minilm-ft-lex``: the scaled lexical score of each text ``(N,)``."""
        if self.lexical is None:
            raise AttnKitError(f"a {self.kind} run reads no lexical score; expected a run of "
                               f"{' or '.join(FUSION_MODELS)}")
        return self.lexical.scores(texts) / float(self.config["fusion"]["scale"])

    @property
    def encoder(self) -> str:
        """Whose token states the model reads (runs from before the option: the published MiniLM)."""
        return self.config.get("encoder", DEFAULT_ENCODER)

    def minilm(self):
        """``(MiniLM encoder, tokenizer)`` of the run's encoder, loaded once per process."""
        return _minilm(MAX_TOKENS[self.data], self.encoder)

    def features_of(self, texts: Sequence[str]) -> tuple[dict[str, Tensor], list[list[list[str]]]]:
        """The model's batch for raw ``texts`` and the tokens of each unit of each text."""
        enc, tok = self.minilm()
        units = [units_of(self.data, t) for t in texts]
        flat = [u for us in units for u in us]
        mid = input_kind(self.kind) == "mid"
        if input_kind(self.kind) == "ids":  # the GRUs read WordPiece ids only
            ids, last, middle = token_ids(tok, flat, MAX_TOKENS[self.data]), [], None
        else:
            ids, last, middle = encode_units(enc, tok, flat, MAX_TOKENS[self.data], mid=mid,
                                             layer=self.model.config.mid_layer if mid else 0)
        vocab = tok._tok  # the WordPiece vocabulary of the tokenizer
        words = [[vocab.id_to_token(int(i)) for i in row] for row in ids]
        per_text, k = [], 0
        groups: list[list[int]] = []
        for us in units:
            groups.append(list(range(k, k + len(us))))
            per_text.append(words[k: k + len(us)])
            k += len(us)
        kind = input_kind(self.kind)
        if kind == "review":
            return review_batch([[last[j] for j in g] for g in groups]), per_text
        if kind == "ids":
            x, m = pad_rows([torch.cat([ids[j] for j in g]).long() for g in groups])
            return {"ids": x, "mask": m}, per_text
        src = middle if mid else last
        x, m = pad_rows([torch.cat([src[j] for j in g]) for g in groups])
        if mid:
            return {"mid": x.float(), "mask": m, "mid_layer": torch.tensor(self.model.config.mid_layer)}, per_text
        return {"states": x.float(), "mask": m}, per_text

    @torch.no_grad()
    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Label, probability and attention of each text (texts are checked with :func:`check_text`)."""
        texts = [check_text(t, self.data) for t in texts]
        if self.kind in LEXICAL_MODELS:  # no attention: the units are the text's sentences, as words
            p = torch.sigmoid(self.model.scores(texts))
            return [Prediction("positive" if float(q) >= 0.5 else "negative", max(float(q), 1 - float(q)),
                               [u.split() for u in units_of(self.data, t)], None, None) for q, t in zip(p, texts)]
        batch, words = self.features_of(texts)
        self.model.eval()
        if self.kind in SKLEARN_MODELS:
            logits, w = self._probe_logits(batch, words), None
        else:
            if self.lexical is not None:
                batch["lex"] = self.lex_scores(texts)
            logits, w = self.model(batch)
        p = torch.softmax(logits, -1)[:, 1]
        out = []
        for i, text_units in enumerate(words):
            tw, uw = None, None
            if isinstance(w, tuple):  # han
                tw = [w[0][i, j, : len(u)].tolist() for j, u in enumerate(text_units)]
                uw = w[1][i, : len(text_units)].tolist()
            elif w is not None:  # one sequence over all the units' tokens
                flat = w[i].tolist()
                tw, k = [], 0
                for u in text_units:
                    tw.append(flat[k: k + len(u)])
                    k += len(u)
            pos = float(p[i])
            out.append(Prediction("positive" if pos >= 0.5 else "negative", max(pos, 1 - pos), text_units, tw, uw))
        return out

    def _probe_logits(self, batch: dict[str, Tensor], words: list[list[list[str]]]) -> Tensor:
        rows = []
        for i, text_units in enumerate(words):
            if self.kind == "sent-mean-lr":
                sents = batch["states"][i]  # (S, T, C)
                m = batch["mask"][i]
                rows.append(torch.stack([F.normalize(sents[j][m[j]].mean(0), dim=-1)
                                         for j in range(len(text_units))]).mean(0))
            else:
                rows.append(F.normalize(batch["states"][i][batch["mask"][i]].mean(0), dim=-1))
        return self.model(torch.stack(rows))


def _minilm(max_length: int, encoder: str = DEFAULT_ENCODER):
    return load_encoder(encoder, max_length)


def check_text(text: object, data: str) -> str:
    """``text`` if it is a non-empty str of at most ``MAX_WORDS[data]`` words; else a clear error."""
    if not isinstance(text, str):
        raise AttnKitError(f"TEXT must be a str; got {type(text).__name__}")
    if not text.strip():
        raise AttnKitError("TEXT is empty; expected some words to classify")
    n = len(text.split())
    if n > MAX_WORDS[data]:
        raise AttnKitError(f"TEXT has {n} words; expected at most {MAX_WORDS[data]} for a model trained on {data}")
    return text


def load_run(path: str | Path) -> LoadedRun:
    """The model of a sentiment run folder, in eval mode, with its best weights."""
    run, config = RunFolder.open_task(path, TASK)
    kind = config["model"]["kind"]
    if kind in LEXICAL_MODELS:
        from .lexical import LexicalModel

        return LoadedRun(run, config, LexicalModel.load(run.path, config["model"]))  # type: ignore[arg-type]
    weights = load_weights(run / "model.safetensors")
    if kind in SKLEARN_MODELS:
        model: nn.Module = LinearProbe(int(weights["coef"].shape[0]))
    else:
        model = build_model(ModelConfig(**config["model"]))
    model.load_state_dict(weights)
    return LoadedRun(run, config, model.eval())
