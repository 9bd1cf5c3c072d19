"""Summarization models, built from the translation application's attnkit.nn models, and the
word vocabulary with temporary ids for source words outside it.

* ``pointer``: the transformer encoder-decoder of :class:`~attnkit.apps.translation.models.TransformerTranslator`
  with a copy mechanism (See et al. 2017, "Get To The Point"). At each step the final distribution
  over the extended vocabulary (the vocabulary plus this source's out-of-vocabulary words) is::

      p(w) = p_gen * p_vocab(w) + (1 - p_gen) * sum_{s: src_s = w} a_s

  where ``a`` is the last decoder layer's cross-attention (averaged over heads, taken from
  :class:`~attnkit.nn.MultiHeadAttention` with ``need_weights=True``) and
  ``p_gen = sigmoid(w . [context; decoder state; input embedding])``. A source word outside the
  vocabulary gets the id ``V + k`` (its order among this source's unknown words), so it can be copied.
* ``transformer``: the same transformer without the copy mechanism (unknown words are ``<unk>``).
* ``rnn``: the GRU encoder-decoder without attention of the translation application.

Every model returns log-probabilities: ``forward(src, src_mask, tgt_in, src_ext, n_ext) -> (B, T, V + n_ext)``
(``n_ext`` 0 without copying), and decodes with ``start(src, src_mask, src_ext, n_ext) -> state`` and
``step(state, tokens) -> (B, V + n_ext)`` and ``reorder(state, index)`` (beam search). The transformers
decode with the translation model's KV caches.

Shape legend: B batch, S source length, T target length, V vocabulary, X = V + n_ext, D model size.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError
from ..translation.models import ModelConfig, RNNTranslator, TransformerTranslator
from ..translation.tokenizer import BOS, EOS, PAD, UNK
from .data import words

__all__ = ["MODELS", "SummConfig", "WordVocab", "Summarizer", "TransformerSummarizer", "RNNSummarizer",
           "build_model", "PAD", "BOS", "EOS", "UNK"]

MODELS = ("pointer", "transformer", "rnn")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


class WordVocab:
    """Lower-case words <-> ids (``0..3`` are ``<pad> <s> </s> <unk>``); words outside it get temporary
    ids ``V, V+1, ...`` per source (:meth:`encode_source`)."""

    def __init__(self, itos: Sequence[str]):
        if tuple(itos[:4]) != SPECIALS:
            raise AttnKitError(f"vocabulary must start with {SPECIALS}; got {tuple(itos[:4])}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], size: int, min_count: int = 2) -> WordVocab:
        """The ``size`` most frequent words of ``texts`` (specials included; ties by word)."""
        counts = Counter(w for t in texts for w in words(t))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *ranked[: max(0, size - len(SPECIALS))]])

    @classmethod
    def load(cls, path: str | Path) -> WordVocab:
        path = Path(path)
        if not path.is_file():
            raise AttnKitError(f"{path} does not exist; expected the vocab.json of a summarization run")
        return cls(json.loads(path.read_text()))

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.itos))
        return Path(path)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids with unknown words as ``<unk>``."""
        return [self.stoi.get(w, UNK) for w in tokens]

    def encode_source(self, tokens: Sequence[str]) -> tuple[list[int], list[int], list[str]]:
        """``(ids with <unk>, extended ids, the source's unknown words in order of first use)``."""
        oov: list[str] = []
        ext = []
        for w in tokens:
            i = self.stoi.get(w)
            if i is None:
                if w not in oov:
                    oov.append(w)
                i = len(self.itos) + oov.index(w)
            ext.append(i)
        return [i if i < len(self.itos) else UNK for i in ext], ext, oov

    def encode_target(self, tokens: Sequence[str], oov: Sequence[str]) -> list[int]:
        """Extended ids of a summary: a word of the source's unknown words gets its temporary id."""
        out = []
        for w in tokens:
            i = self.stoi.get(w)
            if i is None:
                i = len(self.itos) + oov.index(w) if w in oov else UNK
            out.append(i)
        return out

    def decode(self, ids: Sequence[int], oov: Sequence[str] = ()) -> list[str]:
        """Words of extended ids, stopping at ``</s>`` and skipping specials."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(self.itos):
                k = i - len(self.itos)
                out.append(oov[k] if k < len(oov) else "<unk>")
            elif i > UNK:
                out.append(self.itos[i])
        return out


@dataclass(frozen=True)
class SummConfig:
    """Sizes of a summarization model (the GRU uses ``d_model`` per direction and ``emb_dim``)."""

    kind: str  # one of MODELS
    vocab: int  # V
    d_model: int = 128
    emb_dim: int = 64
    layers: int = 2
    heads: int = 4
    ff: int = 256
    dropout: float = 0.1
    max_len: int = 256  # longest source or summary, in tokens

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise AttnKitError(f"model {self.kind!r} is not known; expected one of {', '.join(MODELS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def translation_config(self) -> ModelConfig:
        kind = "rnn" if self.kind == "rnn" else "transformer"
        return ModelConfig(kind=kind, vocab=self.vocab, d_model=self.d_model, emb_dim=self.emb_dim, layers=self.layers,
                           heads=self.heads, ff=self.ff, dropout=self.dropout, max_len=self.max_len)


class Summarizer(nn.Module):
    """The interface of every summarization model (log-probabilities over the extended vocabulary)."""

    config: SummConfig
    copies: bool = False

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, src_ext: Tensor | None = None,
                n_ext: int = 0) -> Tensor:  # (B, T, X)
        raise NotImplementedError(f"{type(self).__name__} must implement forward() (abstract base)")

    def start(self, src: Tensor, src_mask: Tensor, src_ext: Tensor | None = None, n_ext: int = 0) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement start() (abstract base)")

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:  # (B, X)
        raise NotImplementedError(f"{type(self).__name__} must implement step() (abstract base)")

    def reorder(self, state: dict[str, Any], index: Tensor) -> None:
        """Keep batch rows ``index`` of ``state`` (beam search): the decoder's caches and every tensor in it."""
        self.core.reorder(state, index)

    def _in_vocab(self, ids: Tensor) -> Tensor:
        """Temporary (copied-word) ids as ``<unk>``: the embeddings know only the vocabulary."""
        return ids.masked_fill(ids >= self.config.vocab, UNK)


class RNNSummarizer(Summarizer):
    """The GRU encoder-decoder without attention (the decoder sees the source as one vector)."""

    def __init__(self, config: SummConfig):
        super().__init__()
        self.config = config
        self.core = RNNTranslator(config.translation_config())

    def forward(self, src, src_mask, tgt_in, src_ext=None, n_ext=0):
        return torch.log_softmax(self.core(src, src_mask, self._in_vocab(tgt_in)).float(), dim=-1)  # (B, T, V)

    def start(self, src, src_mask, src_ext=None, n_ext=0):
        return self.core.start(src, src_mask)

    def step(self, state, tokens):
        return torch.log_softmax(self.core.step(state, self._in_vocab(tokens)).float(), dim=-1)  # (B, V)


class TransformerSummarizer(Summarizer):
    """The translation transformer, with the pointer-generator copy mechanism when ``config.kind == "pointer"``."""

    def __init__(self, config: SummConfig):
        super().__init__()
        self.config = config
        self.copies = config.kind == "pointer"
        self.core = TransformerTranslator(config.translation_config())
        self.last_cross: dict[str, Tensor] = {}
        if self.copies:
            d = config.d_model
            self.p_gen = nn.Linear(3 * d, 1)  # [context; decoder state; input embedding] -> logit of p_gen
            cross = self.core.decoder.layers[-1].multihead_attn
            cross.register_forward_pre_hook(self._ask_weights, with_kwargs=True)
            cross.register_forward_hook(self._keep_weights)

    # the last decoder layer's cross-attention returns its weights (B, T, S) and output (B, T, D)
    @staticmethod
    def _ask_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def _keep_weights(self, module: nn.Module, args: tuple, output: tuple[Tensor, Tensor]) -> None:
        self.last_cross = {"context": output[0], "weights": output[1]}

    def _decode(self, x: Tensor, memory: Tensor, pad: Tensor, **caches: Any) -> Tensor:
        causal = {} if caches else {"tgt_is_causal": True}  # a KV cache makes self-attention causal itself
        return self.core.decoder(x, memory, memory_key_padding_mask=pad, **causal, **caches)

    def _final(self, h: Tensor, x: Tensor, src_ext: Tensor | None, n_ext: int) -> Tensor:
        """Log-probabilities ``(B, T, X)`` from the decoder output ``h (B, T, D)`` and its input ``x (B, T, D)``."""
        vocab = torch.softmax(self.core.embed.logits(h).float(), dim=-1)  # (B, T, V)
        if not self.copies:
            return vocab.log()
        if src_ext is None:
            raise AttnKitError("the pointer model needs src_ext, the source's extended ids (B, S)")
        attn, ctx = self.last_cross["weights"].float(), self.last_cross["context"]  # (B, T, S), (B, T, D)
        p_gen = torch.sigmoid(self.p_gen(torch.cat((ctx, h, x), dim=-1))).float()  # (B, T, 1)
        self.last_cross["p_gen"] = p_gen[..., 0]
        b, t, _ = vocab.shape
        dist = torch.cat((p_gen * vocab, vocab.new_zeros(b, t, n_ext)), dim=-1)  # (B, T, X)
        index = src_ext.unsqueeze(1).expand(-1, t, -1)  # (B, T, S)
        dist = dist.scatter_add(2, index, (1 - p_gen) * attn)
        return dist.clamp_min(torch.finfo(dist.dtype).tiny).log()

    def forward(self, src, src_mask, tgt_in, src_ext=None, n_ext=0):
        memory = self.core.encode(src, src_mask)  # (B, S, D)
        x = self.core.embed(self._in_vocab(tgt_in))  # (B, T, D)
        h = self._decode(x, memory, ~src_mask)  # (B, T, D)
        return self._final(h, x, src_ext, n_ext)  # (B, T, X)

    def start(self, src, src_mask, src_ext=None, n_ext=0):
        state = self.core.start(src, src_mask)
        state.update(src_ext=src_ext, n_ext=n_ext)
        return state

    def step(self, state, tokens):
        x = self.core.embed(self._in_vocab(tokens).unsqueeze(1), offset=state["t"])  # (B, 1, D)
        h = self._decode(x, state["memory"], state["pad"], caches=state["caches"],
                         memory_caches=state["memory_caches"])
        state["t"] += 1
        return self._final(h, x, state["src_ext"], state["n_ext"])[:, 0]  # (B, X)

    def cross_attention(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, src_ext: Tensor | None = None,
                        n_ext: int = 0) -> dict[str, Tensor]:
        """Teacher-forced last-layer cross-attention ``weights (B, T, S)`` (head mean) and, for the
        pointer model, ``p_gen (B, T)``."""
        cross = self.core.decoder.layers[-1].multihead_attn
        if self.copies:
            self(src, src_mask, tgt_in, src_ext, n_ext)
            return {"weights": self.last_cross["weights"], "p_gen": self.last_cross["p_gen"]}
        handles = [cross.register_forward_pre_hook(self._ask_weights, with_kwargs=True),
                   cross.register_forward_hook(self._keep_weights)]
        try:
            self(src, src_mask, tgt_in)
        finally:
            for handle in handles:
                handle.remove()
        return {"weights": self.last_cross["weights"]}


def build_model(config: SummConfig) -> Summarizer:
    """The model named by ``config.kind``."""
    return RNNSummarizer(config) if config.kind == "rnn" else TransformerSummarizer(config)
