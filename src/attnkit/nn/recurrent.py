"""Attention for recurrent encoder-decoders: Bahdanau (additive) and Luong (dot / general /
concat) attention modules, and a small ``Seq2SeqRNN`` (GRU or LSTM) built on them.

The attention modules hold the learned score parameters and pass them to
:func:`attnkit.scores.additive` / :func:`attnkit.scores.general`; the weighting and combining
is one :func:`attnkit.attention` call with a single head. Queries and keys of different sizes
are zero-padded to a common size (with zero columns in the score weights), which leaves every
score unchanged.

Shapes: query ``(B, Dq)`` (one decoder step) or ``(B, T, Dq)``; keys ``(B, S, Dk)``; values
``(B, S, Dv)`` (default: the keys); ``mask`` ``(B, S)`` bool, True = attend (or any attnkit
mask). Returns ``context`` ``(B, [T,] Dv)`` and ``weights`` ``(B, [T,] S)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks as _masks
from .. import scores as _scores
from ..errors import AttnKitError, ShapeError
from ..functional import attention
from ..masks import Mask

__all__ = ["AdditiveAttention", "LuongAttention", "Seq2SeqRNN"]

LuongMethod = Literal["dot", "general", "concat"]


def _pad_last(x: Tensor, size: int) -> Tensor:
    """Zero-pad the last dim of ``x`` to ``size``."""
    return x if x.shape[-1] == size else F.pad(x, (0, size - x.shape[-1]))


def _as_mask(mask: Tensor | Mask | None) -> Mask | None:
    """A ``(B, S)`` bool key mask (True = attend) or an attnkit mask."""
    if mask is None or isinstance(mask, Mask):
        return mask
    return _masks.from_key_padding(mask, true_means="attend")


class _RecurrentAttention(nn.Module):
    """Shared shell: reshape to one head, call :func:`attnkit.attention`, reshape back."""

    query_dim: int
    key_dim: int

    def _score(self) -> _scores.Score | str:
        raise NotImplementedError(f"{type(self).__name__} must implement _score() (abstract base)")

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None,
                mask: Tensor | Mask | None = None, *, impl: str = "auto") -> tuple[Tensor, Tensor]:
        """``context (B, [T,] Dv)`` and ``weights (B, [T,] S)`` of ``query`` over ``keys``."""
        values = keys if values is None else values
        step = query.dim() == 2
        q = query.unsqueeze(1) if step else query  # (B, T, Dq)
        if q.dim() != 3 or q.shape[-1] != self.query_dim:
            raise ShapeError(f"query must be (B, {self.query_dim}) or (B, T, {self.query_dim}); "
                             f"got {tuple(query.shape)}")
        if keys.dim() != 3 or keys.shape[-1] != self.key_dim:
            raise ShapeError(f"keys must be (B, S, {self.key_dim}); got {tuple(keys.shape)}")
        if values.dim() != 3 or values.shape[:2] != keys.shape[:2]:
            raise ShapeError(f"values must be (B, S, Dv) with (B, S) of keys {tuple(keys.shape[:2])}; "
                             f"got {tuple(values.shape)}")
        d = max(self.query_dim, self.key_dim)
        q4 = _pad_last(q, d).unsqueeze(1)  # (B, 1, T, D)
        k4 = _pad_last(keys, d).unsqueeze(1)  # (B, 1, S, D)
        v4 = values.unsqueeze(1)  # (B, 1, S, Dv)
        ctx, w = attention(q4, k4, v4, _as_mask(mask), score=self._score(), scale=1.0, impl=impl,
                           return_weights=True)
        ctx, w = ctx[:, 0], w[:, 0]  # (B, T, Dv), (B, T, S)
        return (ctx[:, 0], w[:, 0]) if step else (ctx, w)


class AdditiveAttention(_RecurrentAttention):
    """Bahdanau et al. 2015: ``e_ij = v^T tanh(W_q s_i + W_k h_j)``.

    Args:
        query_dim: decoder state size Dq.
        key_dim: encoder annotation size Dk (default Dq).
        attn_dim: hidden size A of the score network (default Dk).
    """

    def __init__(self, query_dim: int, key_dim: int | None = None, attn_dim: int | None = None):
        super().__init__()
        self.query_dim = query_dim
        self.key_dim = query_dim if key_dim is None else key_dim
        self.attn_dim = self.key_dim if attn_dim is None else attn_dim
        self.w_q = nn.Parameter(torch.empty(self.attn_dim, self.query_dim))
        self.w_k = nn.Parameter(torch.empty(self.attn_dim, self.key_dim))
        self.v = nn.Parameter(torch.empty(self.attn_dim))
        for w in (self.w_q, self.w_k):
            nn.init.xavier_uniform_(w)
        nn.init.uniform_(self.v, -1 / math.sqrt(self.attn_dim), 1 / math.sqrt(self.attn_dim))

    def _score(self) -> _scores.Score:
        d = max(self.query_dim, self.key_dim)
        return _scores.additive(_pad_last(self.w_q, d), _pad_last(self.w_k, d), self.v)


class LuongAttention(_RecurrentAttention):
    """Luong et al. 2015 global attention: ``dot`` (``h_t . h_s``), ``general`` (``h_t W h_s``)
    or ``concat`` (``v^T tanh(W [h_t; h_s])``, which splits ``W`` into its query and key halves)."""

    def __init__(self, query_dim: int, key_dim: int | None = None, method: LuongMethod = "general",
                 attn_dim: int | None = None):
        super().__init__()
        self.query_dim = query_dim
        self.key_dim = query_dim if key_dim is None else key_dim
        self.method = method
        if method == "dot":
            if self.key_dim != query_dim:
                raise ShapeError(f"Luong 'dot' attention needs query_dim == key_dim; got {query_dim} and "
                                 f"{self.key_dim} (use method='general' or 'concat')")
        elif method == "general":
            self.weight = nn.Parameter(torch.empty(query_dim, self.key_dim))
            nn.init.xavier_uniform_(self.weight)
        elif method == "concat":
            a = self.key_dim if attn_dim is None else attn_dim
            self.w_cat = nn.Parameter(torch.empty(a, query_dim + self.key_dim))
            self.v = nn.Parameter(torch.empty(a))
            nn.init.xavier_uniform_(self.w_cat)
            nn.init.uniform_(self.v, -1 / math.sqrt(a), 1 / math.sqrt(a))
        else:
            raise AttnKitError(f"Luong attention method must be 'dot', 'general' or 'concat'; got {method!r}")

    def _score(self) -> _scores.Score | str:
        d = max(self.query_dim, self.key_dim)
        if self.method == "dot":
            return "dot"
        if self.method == "general":
            w = F.pad(self.weight, (0, d - self.key_dim, 0, d - self.query_dim))  # (D, D)
            return _scores.general(w)
        w_q, w_k = self.w_cat.split([self.query_dim, self.key_dim], dim=1)  # (A, Dq), (A, Dk)
        return _scores.additive(_pad_last(w_q, d), _pad_last(w_k, d), self.v)


# ----------------------------------------------------------------------------------------------
# a small RNN encoder-decoder with attention
# ----------------------------------------------------------------------------------------------

Cell = Literal["gru", "lstm"]
AttnKind = Literal["additive", "dot", "general", "concat"]


def _rnn(cell: Cell, inp: int, hidden: int) -> nn.RNNBase:
    if cell == "gru":
        return nn.GRU(inp, hidden, batch_first=True)
    if cell == "lstm":
        return nn.LSTM(inp, hidden, batch_first=True)
    raise AttnKitError(f"cell must be 'gru' or 'lstm'; got {cell!r}")


class Seq2SeqRNN(nn.Module):
    """RNN encoder-decoder with attention (Luong et al. 2015 layout, no input feeding).

    The encoder RNN reads the source; the decoder RNN starts from the encoder's final state;
    each decoder output ``h_t`` attends to the encoder outputs, and ``tanh(W_c [c_t; h_t])``
    feeds the output layer. Teacher-forced training runs all target steps at once.

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        emb_dim, hidden: embedding and RNN sizes.
        cell: ``"gru"`` or ``"lstm"``.
        attention: ``"additive"`` (Bahdanau) or a Luong method (``"dot"``, ``"general"``, ``"concat"``).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, emb_dim: int = 32, hidden: int = 64,
                 cell: Cell = "gru", attention: AttnKind = "general"):
        super().__init__()
        self.src_emb = nn.Embedding(src_vocab, emb_dim)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb_dim)
        self.encoder = _rnn(cell, emb_dim, hidden)
        self.decoder = _rnn(cell, emb_dim, hidden)
        self.attn: _RecurrentAttention = (AdditiveAttention(hidden) if attention == "additive"
                                          else LuongAttention(hidden, method=attention))
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, tgt_vocab)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """``src (B, S)`` token ids -> encoder outputs ``(B, S, hidden)`` and final state."""
        return self.encoder(self.src_emb(src))

    def decode(self, tgt_in: Tensor, memory: Tensor, state: Tensor | tuple[Tensor, Tensor],
               src_mask: Tensor | None = None) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor], Tensor]:
        """Decoder steps for ``tgt_in (B, T)``: logits ``(B, T, V)``, new state, weights ``(B, T, S)``."""
        h, state = self.decoder(self.tgt_emb(tgt_in), state)  # (B, T, hidden)
        ctx, w = self.attn(h, memory, mask=src_mask)  # (B, T, hidden), (B, T, S)
        h_tilde = torch.tanh(self.combine(torch.cat((ctx, h), dim=-1)))  # (B, T, hidden)
        return self.out(h_tilde), state, w

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits ``(B, T, V)``; ``src_mask (B, S)`` True = real token."""
        memory, state = self.encode(src)
        return self.decode(tgt_in, memory, state, src_mask)[0]

    @torch.no_grad()
    def generate(self, src: Tensor, max_len: int, bos: int, src_mask: Tensor | None = None) -> Tensor:
        """Greedy decoding: ``(B, max_len)`` token ids (the BOS token not included)."""
        memory, state = self.encode(src)
        tok = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        outs = []
        for _ in range(max_len):
            logits, state, _ = self.decode(tok, memory, state, src_mask)
            tok = logits.argmax(-1)  # (B, 1)
            outs.append(tok)
        return torch.cat(outs, dim=1)
