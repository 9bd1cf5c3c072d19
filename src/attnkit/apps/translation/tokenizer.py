"""A joint subword vocabulary for both sides of a translation pair: byte-pair encoding trained
with the ``tokenizers`` library (Metaspace pre-tokenizer, so decoding gives back the text), saved
as ``tokenizer.json`` beside each checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...errors import AttnKitError

__all__ = ["SubwordTokenizer", "PAD", "BOS", "EOS", "UNK"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, in this order


class SubwordTokenizer:
    """Text <-> token ids with a BPE model; ids 0..3 are ``<pad> <s> </s> <unk>``."""

    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        self.tok = tok
        for i, name in enumerate(SPECIALS):
            if tok.token_to_id(name) != i:
                raise AttnKitError(f"tokenizer must have {name!r} at id {i}; got id {tok.token_to_id(name)}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> SubwordTokenizer:
        """Train a BPE vocabulary of at most ``vocab_size`` entries on ``texts``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> SubwordTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise AttnKitError(f"{path} does not exist; expected the tokenizer.json of a run")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> Path:
        self.tok.save(str(path))
        return Path(path)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS)."""
        return self.tok.encode(text).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their character spans in ``text``."""
        enc = self.tok.encode(text)
        return enc.ids, list(enc.offsets)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The subword strings of ``ids`` (for axis labels)."""
        return [self.tok.id_to_token(int(i)) or "?" for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, stopping at the first EOS and skipping specials."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i > UNK:
                out.append(i)
        return self.tok.decode(out)

    def batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = True,
              max_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Right-padded ids ``(B, T)`` and mask ``(B, T)`` (True = real token)."""
        rows = []
        for text in texts:
            ids = self.encode(text)
            if max_len is not None:
                ids = ids[: max_len - int(bos) - int(eos)]
            rows.append(([BOS] if bos else []) + ids + ([EOS] if eos else []))
        width = max(1, max(len(r) for r in rows))
        ids_t = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids_t, ids_t != PAD
