"""Speech mode: Whisper tiny.en (:mod:`attnkit.models.whisper`) on a real recording.

The clip (one of Debian's ``pocketsphinx-testdata`` recordings with a transcript, picked by name)
is transcribed greedily; the generated tokens are then fed back under teacher forcing to read the
attention behind each of them. Views: ``cross`` (rows: generated tokens, columns: the encoder's
20 ms audio positions that cover the clip; the rest of Whisper's 30 s window is padding and left
out, so a row sums to the weight on the clip) and ``decoder`` (rows: generated tokens, columns:
the tokens the decoder read, prompt included). Word timings come from
:func:`attnkit.models.whisper.timing.align_words` (DTW over the alignment heads' cross-attention),
fed the same weights. ``info["picture"]`` carries the clip's log-mel spectrogram (two 10 ms frames
per audio position) and the words with their start and end, for the page to draw under the
heatmap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..api import Analysis, RequestError, View, encode_picture
from ._base import Input, Mode

__all__ = ["SpeechMode", "MODE", "SECONDS_PER_POSITION"]

SECONDS_PER_POSITION = 0.02  # one encoder position: two 10 ms mel frames


def _label(tok: Any, t: int) -> str:
    """A token's text, or its name for the special tokens (which decode to nothing)."""
    sp = tok.special
    names = {sp.eot: "<|endoftext|>", sp.sot: "<|startoftranscript|>", sp.transcribe: "<|transcribe|>",
             sp.no_speech: "<|nospeech|>", sp.no_timestamps: "<|notimestamps|>"}
    if t in names:
        return names[t]
    if t >= sp.timestamp_begin:
        return f"<|{(t - sp.timestamp_begin) * SECONDS_PER_POSITION:.2f}|>"
    return tok.token_text(t)


class SpeechMode(Mode):
    name = "speech"
    title = "Speech (Whisper tiny.en)"
    order = 50
    help = ("Pick a recording. Rows are the tokens Whisper generated; the cross-attention columns are 20 ms steps "
            "of the audio, drawn above the spectrogram with the word timings. Hover a row to trace its attention "
            "over the spectrogram.")

    def __init__(self, run: str | Path | None = None):
        super().__init__(run)
        self.lock = threading.Lock()
        self._clips: dict[str, Any] | None = None
        self._missing: str | None = None

    def clips(self) -> dict[str, Any]:
        """The recordings by name (empty, with the reason kept, when the data is not installed)."""
        if self._clips is None:
            from ...apps.speech.data import DataMissing, real_clips

            try:
                self._clips = {c.name: c for c in real_clips()}
            except DataMissing as exc:
                self._clips, self._missing = {}, str(exc)
        return self._clips

    @property
    def inputs(self) -> list[Input]:
        from ...apps.speech.demo import DEMO_CLIP

        names = tuple(self.clips())
        return [Input("clip", "recording (pocketsphinx-testdata)", "select", required=True,
                      default=DEMO_CLIP if DEMO_CLIP in names else (names[0] if names else None), choices=names)]

    def parse(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if not self.clips():
            raise RequestError(self._missing or "no recordings found", 503)
        return super().parse(body)

    def extra_description(self) -> dict[str, Any]:
        return {"seconds_per_position": SECONDS_PER_POSITION, "data_missing": self._missing}

    def whisper(self) -> Any:
        from ...apps.speech.data import DataMissing, require_data
        from ...models.whisper import load_whisper

        try:
            require_data("whisper")
        except DataMissing as exc:
            raise RequestError(str(exc), 503) from None
        return load_whisper()

    def warm(self) -> None:
        from ...apps.speech.data import data_status

        if data_status()["whisper"] == "installed":  # otherwise each request says what to install
            self.whisper()

    def analyse(self, inputs: Mapping[str, Any], key: str) -> Analysis:
        from ...apps.speech.normalizer import normalize_english
        from ...interpret import capture_attention
        from ...models.whisper import log_mel_spectrogram
        from ...models.whisper.decoding import decode
        from ...models.whisper.timing import align_words

        clip = self.clips()[inputs["clip"]]
        w = self.whisper()
        tok = w.tokenizer
        audio = torch.as_tensor(clip.audio(), dtype=torch.float32)  # (N,) 16 kHz
        notices = []
        if audio.numel() > 30 * 16000:
            notices.append(f"The clip is {audio.numel() / 16000:.1f} s long; only its first 30 s window is shown.")
            audio = audio[: 30 * 16000]
        with self.lock, torch.inference_mode():
            mel = log_mel_spectrogram(audio)  # (80, 3000)
            states = w.model.embed_audio(mel[None])  # (1, 1500, E)
            result = decode(w, mel, audio=states)
            text_tokens = [t for t in result.tokens if t < tok.eot]
            prompt = tok.sot_sequence(timestamps=False)
            seq = [*prompt, *text_tokens, tok.eot]
            with capture_attention(w.model) as cap:
                _, cross_list = w.model.decoder(torch.tensor([seq]), states, need_weights=True)
            cross_all = torch.cat(cross_list, 0)  # (L, H, T, 1500)
            timing = align_words(w, states, text_tokens, audio.numel(), weights=cross_all)
        n_pos = max(1, min(cross_all.shape[-1], -(-audio.numel() // int(16000 * SECONDS_PER_POSITION))))
        first = len(prompt) - 1  # the step that generated the first text token
        generated = [*text_tokens, tok.eot]
        rows = [_label(tok, t) for t in generated]
        read = [_label(tok, t) for t in seq[:-1]]
        cols = [f"{i * SECONDS_PER_POSITION:.2f}s" for i in range(n_pos)]
        views = {"cross": View(f"cross-attention (generated tokens x the clip's {n_pos} audio positions)",
                               cross_all[:, :, first:-1, :n_pos].float(), rows, cols)}
        t = len(seq)
        selfs = [r.weights[0] for r in cap.records if r.weights.shape[-2:] == (t, t)]  # (H, T, T) per layer
        if len(selfs) == len(cross_list):
            views["decoder"] = View("decoder self-attention (generated tokens x tokens read)",
                                    torch.stack(selfs)[:, :, first:-1, :-1].float(), rows, read)
        words = [{"word": wt.word.strip(), "start": round(wt.start, 3), "end": round(wt.end, 3)}
                 for wt in timing.words]
        picture = encode_picture(mel[:, : 2 * n_pos].flip(0).float(), "spectrogram", frames_per_col=2,
                                 seconds_per_col=SECONDS_PER_POSITION, words=words, views=["cross"],
                                 title="log-mel spectrogram (80 bands, low frequencies at the bottom)")
        import jiwer

        wer = jiwer.wer(normalize_english(clip.reference), normalize_english(result.text))
        table = {"id": "words", "title": "word timings (DTW over the alignment heads' cross-attention)",
                 "columns": ["word", "start s", "end s"],
                 "rows": [[d["word"], d["start"], d["end"]] for d in words]}
        info = {"tokens": rows, "notices": notices, "picture": picture, "tables": [table],
                "numbers": {"clip": clip.name, "seconds": round(audio.numel() / 16000, 2),
                            "reference": clip.reference, "transcript": result.text.strip(),
                            "WER": f"{100 * wer:.1f}%", "alignment heads": str(list(w.alignment_heads))}}
        return Analysis(key, self.name, views, info)


MODE = SpeechMode
