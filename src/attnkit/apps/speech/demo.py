"""``attnkit demo speech``: Whisper tiny.en on attnkit transcribes a real LibriVox recording from
pocketsphinx-testdata, prints the words with their times, and writes the cross-attention picture."""

from __future__ import annotations

from pathlib import Path

import torch

from ...models.whisper import load_whisper, log_mel_spectrogram
from ...models.whisper.decoding import decode
from ...models.whisper.timing import align_words
from .data import real_clips, require_data
from .normalizer import normalize_english
from .pictures import cross_attention_picture

__all__ = ["run_demo", "DEMO_CLIP"]

DEMO_CLIP = "librivox/sense_and_sensibility_01_austen_64kb-0890"


@torch.no_grad()
def run_demo(out: str | Path, log=print) -> Path:
    require_data("pocketsphinx")
    require_data("whisper")
    clip = next(c for c in real_clips() if c.name == DEMO_CLIP)
    w = load_whisper()
    x = torch.as_tensor(clip.audio())
    mel = log_mel_spectrogram(x)
    states = w.model.embed_audio(mel[None])
    result = decode(w, mel, audio=states)
    al = align_words(w, states, result.tokens, x.numel())
    import jiwer

    wer = jiwer.wer(normalize_english(clip.reference), normalize_english(result.text))
    log(f"clip:       {clip.path} ({x.numel() / 16000:.2f} s, LibriVox, read speech)")
    log(f"reference:  {clip.reference}")
    log(f"Whisper:    {result.text.strip()}   (WER {100 * wer:.1f}%)")
    log("words:      " + "  ".join(f"{t.word.strip()} [{t.start:.2f}-{t.end:.2f}]" for t in al.words))
    labels = ["<|notimestamps|>"] + [w.tokenizer.token_text(t) for t in al.tokens]
    path = cross_attention_picture(mel, al, labels, x.numel() / 16000, out,
                                   title=f"Whisper tiny.en on attnkit: cross-attention of the alignment heads "
                                         f"{list(w.alignment_heads)}")
    log(f"wrote {path}")
    return Path(path)
