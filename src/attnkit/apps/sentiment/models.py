"""Sentiment classifiers: pooling heads on frozen MiniLM states, MiniLM with its top layers
fine-tuned, bidirectional GRUs from scratch, and a hierarchical attention network for reviews.

Every attention here is :class:`attnkit.nn.MultiHeadAttention`: :class:`AttentionPool` is one
learned query attending over the token states, with the padding hidden by attnkit's mask
(True = attend), so its weights are a distribution over the real tokens only.

Batches are dicts (shapes: B texts, T tokens, S sentences, C MiniLM width 384):

* ``states (B, T, C)``, ``mask (B, T)`` bool: frozen MiniLM last-layer states (``minilm-mean``,
  ``minilm-attn``);
* ``mid (B, T, C)``, ``mask``, ``mid_layer`` (a 0-d int tensor): hidden state ``6 - tune_layers``
  (default 4), the input of the fine-tuned top layers (``minilm-ft``; ``minilm-ft-lex`` also reads
  ``lex (B,)``, the NB-SVM score of each sentence);
* ``ids (B, T)``, ``mask``: WordPiece ids (``gru``, ``gru-attn``);
* ``states (B, S, T, C)``, ``mask (B, S, T)``, ``sent_mask (B, S)``: a review's sentences (``han``;
  ``han-lex`` also reads ``lex (B,)``, the NB-SVM score of each review, see :mod:`.lexical`).

``forward(batch)`` returns ``(logits (B, 2), weights)``; ``weights`` is ``(B, T)`` for the token
poolers, ``(B, S, T)`` word and ``(B, S)`` sentence weights (a tuple) for ``han``, None without attention.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError
from ...nn import MultiHeadAttention

__all__ = ["MODELS", "SKLEARN_MODELS", "LEXICAL_MODELS", "FUSION_MODELS", "MODEL_DATA", "ModelConfig",
           "AttentionPool", "MeanPool", "FrozenHead", "FineTuned", "BiGRU", "HAN", "build_model", "has_attention",
           "input_kind", "fine_tuned"]

# model -> what it is
MODELS = {
    "minilm-lr": "frozen MiniLM, mean pooling, logistic regression (scikit-learn)",
    "minilm-mean": "frozen MiniLM, mean pooling, linear layer",
    "minilm-attn": "frozen MiniLM, attention pooling (learned query), linear layer",
    "minilm-ft": "MiniLM with its top tune_layers layers fine-tuned (full preset: all 6), attention pooling",
    "minilm-ft-lex": "minilm-ft whose pooled vector is concatenated with the sentence's NB-SVM score (late fusion)",
    "gru": "bidirectional GRU from scratch, mean pooling",
    "gru-attn": "bidirectional GRU from scratch, attention pooling",
    "sent-mean-lr": "reviews: mean of frozen MiniLM sentence embeddings, logistic regression",
    "han": "reviews: hierarchical attention (words within sentences, sentences within the review) on frozen MiniLM",
    "han-lex": "reviews: han whose review vector is concatenated with the review's NB-SVM score (late fusion)",
    "tfidf-lr": "TF-IDF of word uni+bigrams, logistic regression (scikit-learn; C chosen on the validation fold)",
    "nbsvm": "NB-SVM (Wang & Manning 2012): binary uni+bigrams scaled by naive-Bayes log-count ratios, linear SVM",
}
SKLEARN_MODELS = ("minilm-lr", "sent-mean-lr")  # logistic regressions on pooled MiniLM states
LEXICAL_MODELS = ("tfidf-lr", "nbsvm")  # linear models on word n-grams of the raw text (see .lexical)
FUSION_MODELS = ("han-lex", "minilm-ft-lex")  # attention models whose classifier also reads a lexical score
MODEL_DATA = {"sentences": ("minilm-lr", "minilm-mean", "minilm-attn", "minilm-ft", "gru", "gru-attn", "tfidf-lr",
                            "nbsvm", "minilm-ft-lex"),
              "reviews": ("minilm-lr", "sent-mean-lr", "minilm-mean", "minilm-attn", "han", "tfidf-lr", "nbsvm",
                          "han-lex")}


def has_attention(kind: str) -> bool:
    return kind in ("minilm-attn", "minilm-ft", "minilm-ft-lex", "gru-attn", "han", "han-lex")


def fine_tuned(kind: str) -> bool:
    """Whether ``kind`` fine-tunes MiniLM's top layers on cached intermediate states."""
    return kind in ("minilm-ft", "minilm-ft-lex")


def input_kind(kind: str) -> str:
    """Which batch a model reads: ``states``, ``mid``, ``ids``, ``review`` or ``text`` (the raw text)."""
    if kind in LEXICAL_MODELS:
        return "text"
    return {"minilm-ft": "mid", "minilm-ft-lex": "mid", "gru": "ids", "gru-attn": "ids", "han": "review",
            "han-lex": "review", "sent-mean-lr": "review"}.get(kind, "states")


@dataclass(frozen=True)
class ModelConfig:
    kind: str
    dim: int = 384  # MiniLM width (input of the heads)
    vocab: int = 30522  # WordPiece vocabulary (GRU embeddings)
    emb_dim: int = 128
    hidden: int = 128  # GRU hidden size per direction
    heads: int = 1  # attention-pooling heads (weights shown averaged over heads)
    attn_dim: int = 64  # width of the attention pooling's keys, values and output
    dropout: float = 0.1
    tune_layers: int = 2  # minilm-ft(-lex): how many top MiniLM layers are fine-tuned (1..6)

    def __post_init__(self) -> None:
        if self.kind not in MODELS or self.kind in SKLEARN_MODELS + LEXICAL_MODELS:
            torch_models = [m for m in MODELS if m not in SKLEARN_MODELS + LEXICAL_MODELS]
            raise AttnKitError(f"model kind {self.kind!r} is not a torch model; expected one of "
                               f"{', '.join(torch_models)}")
        from .features import mid_layer_of

        mid_layer_of(self.tune_layers)  # an AttnKitError naming tune_layers unless an int from 1 to 6

    @property
    def mid_layer(self) -> int:
        """The hidden-state index ``minilm-ft`` (and ``minilm-ft-lex``) reads (``6 - tune_layers``; 0 is
        the embedding output)."""
        from .features import mid_layer_of

        return mid_layer_of(self.tune_layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_mask(mask: Tensor, shape: tuple[int, ...]) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != shape:
        raise AttnKitError(f"mask must be a bool tensor of shape {shape} (True = real token); got "
                           f"{mask.dtype} {tuple(mask.shape)}")


def _with_score(v: Tensor, batch: dict[str, Tensor], kind: str) -> Tensor:
    """``v (B, E)`` with the batch's lexical score ``lex (B,)`` appended as a last column: ``(B, E + 1)``."""
    b = v.shape[0]
    lex = batch.get("lex")
    if lex is None or tuple(lex.shape) != (b,):
        raise AttnKitError(f"{kind} needs batch['lex'] of shape ({b},), the lexical score of each text; "
                           f"got {None if lex is None else tuple(lex.shape)}")
    if torch.isnan(lex).any():
        raise AttnKitError("batch['lex'] holds NaN; expected a lexical score for every text")
    return torch.cat([v, lex.to(v.dtype)[:, None]], -1)


@torch.no_grad()
def _start_from_score(out: nn.Linear, slope: float, intercept: float, keep_vector: bool) -> None:
    """Set the score column of the fusion classifier ``out`` (its last input) and its bias so that
    the score adds ``slope * lex + intercept`` to the logit margin (positive minus negative); the
    vector's weights are zeroed unless ``keep_vector``."""
    for name, v in (("slope", slope), ("intercept", intercept)):
        if not isinstance(v, float | int) or not torch.isfinite(torch.tensor(float(v))):
            raise AttnKitError(f"{name} must be a finite number; got {v!r}")
    if not keep_vector:
        out.weight.zero_()
    out.weight[:, -1] = torch.tensor([-slope / 2, slope / 2])
    out.bias.copy_(torch.tensor([-intercept / 2, intercept / 2]))


class AttentionPool(nn.Module):
    """A learned query attends over ``x (B, T, C)`` where ``mask (B, T)`` is True; returns the pooled
    vector ``(B, E)`` and the weights ``(B, T)`` (averaged over heads): each row sums to 1 over the
    real tokens and is exactly 0 on padding. A row with no real token pools to zeros.

    Keys and values are projected from ``C`` to ``E = attn_dim`` (default ``C``): a small ``E``
    makes the head cheap on wide states, and loses nothing a linear classifier on top could use."""

    def __init__(self, dim: int, heads: int = 1, attn_dim: int | None = None):
        super().__init__()
        e = attn_dim or dim
        self.out_dim = e
        self.query = nn.Parameter(torch.randn(1, 1, e) * e ** -0.5)
        self.attn = MultiHeadAttention(e, heads, kdim=dim, vdim=dim, batch_first=True)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        _check_mask(mask, tuple(x.shape[:2]))
        q = self.query.expand(x.shape[0], 1, -1)  # (B, 1, C)
        out, w = self.attn(q, x, x, mask=mask[:, None, None, :], need_weights=True)  # (B, 1, C), (B, 1, T)
        return out[:, 0], w[:, 0]


class MeanPool(nn.Module):
    """Mean of ``x (B, T, C)`` over the tokens where ``mask (B, T)`` is True: ``(B, C)``."""

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        _check_mask(mask, tuple(x.shape[:2]))
        m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0), None


def _pool(cfg: ModelConfig, dim: int) -> tuple[nn.Module, int]:
    """The pooling of ``cfg`` over ``dim``-wide states and the width of what it returns."""
    if has_attention(cfg.kind):
        pool = AttentionPool(dim, cfg.heads, cfg.attn_dim)
        return pool, pool.out_dim
    return MeanPool(), dim


class FrozenHead(nn.Module):
    """Pooling + dropout + linear over frozen MiniLM states (``minilm-mean``, ``minilm-attn``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.pool, width = _pool(cfg, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(width, 2)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        v, w = self.pool(batch["states"], batch["mask"])
        return self.out(self.drop(v)), w


class FineTuned(nn.Module):
    """The top ``cfg.tune_layers`` MiniLM layers (trainable copies) on cached hidden states
    ``6 - tune_layers``, then attention pooling.

    The bottom layers are frozen, so their output is computed once (see
    :mod:`~attnkit.apps.sentiment.features`); :meth:`from_minilm` copies the pretrained top layers.
    A batch's ``mid_layer`` must be the hidden state these layers expect: states of another layer
    are refused.

    ``minilm-ft-lex`` (late fusion, as ``han-lex``): the classifier reads the pooled vector
    concatenated with the batch's ``lex (B,)``, a lexical score of the sentence;
    :meth:`start_from_score` sets the score's weight to its calibration and keeps the vector's
    weights as initialised, so the fine-tuned layers get a gradient from the first step.
    """

    def __init__(self, cfg: ModelConfig, layers: nn.ModuleList | None = None, settings: Any = None):
        super().__init__()
        from ...models.bert import AttentionSettings, BertConfig, BertLayer

        self.config = cfg
        if layers is None:  # the architecture only; weights come from a checkpoint
            bcfg = BertConfig(hidden_size=cfg.dim, num_attention_heads=12, intermediate_size=4 * cfg.dim)
            layers = nn.ModuleList(BertLayer(bcfg) for _ in range(cfg.tune_layers))
        if len(layers) != cfg.tune_layers:
            raise AttnKitError(f"layers has {len(layers)} layers; expected tune_layers={cfg.tune_layers}")
        self.layers = layers
        self.settings = settings or AttentionSettings()
        self.pool = AttentionPool(cfg.dim, cfg.heads, cfg.attn_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.fusion = cfg.kind in FUSION_MODELS
        self.out = nn.Linear(self.pool.out_dim + int(self.fusion), 2)

    def start_from_score(self, slope: float, intercept: float) -> None:
        """``minilm-ft-lex``: the score adds ``slope * lex + intercept`` to the logit margin at the
        start; the pooled vector's weights keep their initialisation (a learning rate made for
        fine-tuning, 5e-5, would move weights started at zero too little to matter in 250 steps)."""
        if not self.fusion:
            raise AttnKitError(f"start_from_score applies to minilm-ft-lex; this model is {self.config.kind!r}")
        _start_from_score(self.out, slope, intercept, keep_vector=True)

    @classmethod
    def from_minilm(cls, cfg: ModelConfig, bert: nn.Module) -> FineTuned:
        from .features import LAYERS

        if len(bert.layers) != LAYERS:
            raise AttnKitError(f"bert has {len(bert.layers)} layers; expected MiniLM's {LAYERS}")
        layers = copy.deepcopy(nn.ModuleList(list(bert.layers)[cfg.mid_layer:]))
        layers.requires_grad_(True)
        return cls(cfg, layers, bert.settings)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        from ...models.bert import Packing, padding_mask

        x, mask = batch["mid"], batch["mask"]
        _check_mask(mask, tuple(x.shape[:2]))
        got = batch.get("mid_layer")
        if got is None or int(got) != self.config.mid_layer:
            raise AttnKitError(f"batch['mid_layer'] is {None if got is None else int(got)}; this model fine-tunes the "
                               f"top {self.config.tune_layers} layers and reads hidden state {self.config.mid_layer}")
        am = padding_mask(mask)
        packing = Packing.from_mask(mask) if am is not None else None  # matmuls on the real tokens only
        h = packing.gather(x) if packing is not None else x  # (N, C) or (B, T, C)
        for layer in self.layers:
            h = layer(h, am, self.settings, packing)
        x = packing.scatter(h) if packing is not None else h  # (B, T, C)
        v, w = self.pool(x, mask)
        v = self.drop(v)
        if self.fusion:
            v = _with_score(v, batch, self.config.kind)  # (B, E + 1)
        return self.out(v), w


class BiGRU(nn.Module):
    """Embeddings + one bidirectional GRU layer from scratch, then mean or attention pooling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab, cfg.emb_dim, padding_idx=0)
        self.gru = nn.GRU(cfg.emb_dim, cfg.hidden, batch_first=True, bidirectional=True)
        self.pool, width = _pool(cfg, 2 * cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(width, 2)

    def forward(self, batch: dict[str, Tensor], embedded: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``embedded (B, T, emb_dim)`` replaces the embedding lookup (for gradient x input)."""
        ids, mask = batch["ids"], batch["mask"]
        _check_mask(mask, tuple(ids.shape))
        x = self.drop(self.emb(ids)) if embedded is None else embedded
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=ids.shape[1])  # (B, T, 2H)
        v, w = self.pool(h, mask)
        return self.out(self.drop(v)), w


class HAN(nn.Module):
    """Hierarchical attention (Yang et al. 2016) on frozen MiniLM states: attention pooling over
    the tokens of each sentence, a bidirectional GRU over the sentence vectors, then attention
    pooling over the sentences.

    ``han-lex`` (late fusion): the classifier reads the review vector concatenated with the batch's
    ``lex (B,)``, a lexical model's score of the review; :meth:`start_from_score` starts it at the
    lexical model alone, so that the attention model learns what the word n-grams miss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.word_pool = AttentionPool(cfg.dim, cfg.heads, cfg.attn_dim)
        self.sent_rnn = nn.GRU(self.word_pool.out_dim, cfg.hidden, batch_first=True, bidirectional=True)
        self.sent_pool = AttentionPool(2 * cfg.hidden, cfg.heads, cfg.attn_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.fusion = cfg.kind == "han-lex"
        self.out = nn.Linear(self.sent_pool.out_dim + int(self.fusion), 2)

    def start_from_score(self, slope: float, intercept: float) -> None:
        """``han-lex``: set the classifier so that its logit margin (positive minus negative) is
        ``slope * lex + intercept`` and the review vector's weights are zero: training starts from
        the (calibrated) lexical model and the gradient grows the attention model's share."""
        if not self.fusion:
            raise AttnKitError(f"start_from_score applies to han-lex; this model is {self.config.kind!r}")
        _start_from_score(self.out, slope, intercept, keep_vector=False)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, mask, smask = batch["states"], batch["mask"], batch["sent_mask"]  # (B,S,T,C), (B,S,T), (B,S)
        b, s, t, c = x.shape
        _check_mask(mask, (b, s, t))
        _check_mask(smask, (b, s))
        sv, ww = self.word_pool(x.reshape(b * s, t, c), mask.reshape(b * s, t))  # (B*S, E), (B*S, T)
        sv = self.drop(sv.reshape(b, s, -1))
        lengths = smask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(sv, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.sent_rnn(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=s)  # (B, S, 2H)
        v, sw = self.sent_pool(h, smask)
        v = self.drop(v)
        if self.fusion:
            v = _with_score(v, batch, self.config.kind)  # (B, E + 1)
        return self.out(v), (ww.reshape(b, s, t), sw)


def build_model(cfg: ModelConfig, bert: nn.Module | None = None) -> nn.Module:
    """The torch model of ``cfg`` (``minilm-ft`` copies the top layers of ``bert`` when given)."""
    if cfg.kind in ("minilm-mean", "minilm-attn"):
        return FrozenHead(cfg)
    if fine_tuned(cfg.kind):
        return FineTuned.from_minilm(cfg, bert) if bert is not None else FineTuned(cfg)
    if cfg.kind in ("gru", "gru-attn"):
        return BiGRU(cfg)
    return HAN(cfg)
