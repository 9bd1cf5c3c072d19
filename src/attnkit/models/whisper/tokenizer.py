"""Whisper's byte-level BPE tokenizer (the package's ``tokenizer.json``, read with ``tokenizers``)
and its special tokens. For an English-only model (vocabulary 51864) the ids are: end of text
50256, start of transcript 50257, no-timestamps 50362, and 1,501 timestamp tokens from 50363
(0.00 s) in 0.02 s steps to 51863 (30.00 s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import AttnKitError

__all__ = ["WhisperTokenizer", "TIME_STEP"]

TIME_STEP = 0.02  # seconds per timestamp token


@dataclass(frozen=True)
class _Specials:
    eot: int
    sot: int
    transcribe: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    prev: int  # <|startofprev|>: a prompt of earlier text comes after it


class WhisperTokenizer:
    """Encode and decode text; ``sot_sequence`` starts a transcript. ``n_vocab`` is the model's
    vocabulary size (51864 English-only)."""

    def __init__(self, path: str | Path, n_vocab: int = 51864):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception on a bad file
            raise AttnKitError(f"cannot read the tokenizer {str(path)!r}: {exc}") from exc
        self.n_vocab = n_vocab
        names = ("<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|nocaptions|>", "<|notimestamps|>",
                 "<|startofprev|>")
        ids = [self._tok.token_to_id(n) for n in names]
        if any(i is None for i in ids):
            raise AttnKitError(f"tokenizer {str(path)!r} lacks Whisper's special tokens; expected all of {names}")
        eot, sot, transcribe, no_speech, no_ts, prev = ids
        self.special = _Specials(eot=eot, sot=sot, transcribe=transcribe, no_speech=no_speech, no_timestamps=no_ts,
                                 timestamp_begin=no_ts + 1,  # timestamps follow <|notimestamps|>
                                 prev=prev)
        self.multilingual = n_vocab >= 51865

    @property
    def eot(self) -> int:
        return self.special.eot

    @property
    def timestamp_begin(self) -> int:
        return self.special.timestamp_begin

    def sot_sequence(self, timestamps: bool = False) -> list[int]:
        """The prompt of a transcript: ``[sot]`` (plus no-timestamps unless ``timestamps``)."""
        return [self.special.sot] if timestamps else [self.special.sot, self.special.no_timestamps]

    def prompt_sequence(self, previous: list[int], max_previous: int, timestamps: bool = False) -> list[int]:
        """``[<|startofprev|>, *previous[-max_previous:], *sot_sequence]``: a transcript conditioned on
        earlier text; ``[sot_sequence]`` alone when ``previous`` is empty."""
        keep = previous[-max_previous:] if max_previous > 0 else []
        head = [self.special.prev, *keep] if keep else []
        return [*head, *self.sot_sequence(timestamps)]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of the ids, skipping special and timestamp tokens."""
        return self._tok.decode([i for i in ids if i < self.special.eot])

    def decode_with_timestamps(self, ids: list[int]) -> str:
        """Text with ``<|1.08|>`` markers for timestamp tokens."""
        out, run = [], []
        for i in ids:
            if i >= self.timestamp_begin:
                out.append(self._tok.decode(run))
                run = []
                out.append(f"<|{(i - self.timestamp_begin) * TIME_STEP:.2f}|>")
            elif i < self.eot:
                run.append(i)
        out.append(self._tok.decode(run))
        return "".join(out)

    def token_text(self, i: int) -> str:
        """The text of one token (may be part of a multi-byte character)."""
        return self._tok.decode([i])

    def id_of(self, text: str) -> int | None:
        return self._tok.token_to_id(text)
