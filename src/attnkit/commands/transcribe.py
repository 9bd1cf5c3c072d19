"""``attnkit transcribe AUDIO``: speech to text with Whisper tiny.en running on attnkit;
``--words`` adds word timings from cross-attention, ``--json`` writes the transcript, ``--picture``
the cross-attention picture (of the first 30 s). Long audio is conditioned on the previous window's
text unless ``--no-condition``; ``--prompt`` gives text to condition the first window on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import UsageError, check_sentence, int_range, output_file, picture_formats, shown

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".raw")  # as attnkit.models.whisper.audio reads them


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe speech (WAV, FLAC, OGG, 16 kHz int16 .raw) with Whisper "
                                          "tiny.en on attnkit")
    p.add_argument("audio", metavar="AUDIO", help="the audio file: .wav, .flac, .ogg (any rate, mixed to mono) or "
                                                  ".raw (16 kHz signed 16-bit mono)")
    p.add_argument("--beam", type=int_range(1, 16), default=1, help="beam size (default 1: greedy)")
    p.add_argument("--no-condition", action="store_true",
                   help="decode each 30 s window on its own, without the previous window's text as a prompt")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text to condition the first window on (names, spelling, style; at most 100 words)")
    p.add_argument("--words", action="store_true", help="print each word with its start and end time")
    p.add_argument("--json", type=output_file(("json",), "JSON file"), default=None,
                   help="write the transcript (segments and words) to this .json file")
    p.add_argument("--picture", type=output_file(picture_formats, "picture"), default=None,
                   help="write the cross-attention picture of the first 30 s here (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def _check_audio(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise UsageError(f"AUDIO {shown(text)}; expected a file ending in {', '.join(AUDIO_SUFFIXES)}")
    if not path.exists():
        raise UsageError(f"AUDIO {shown(text)} does not exist; expected an audio file")
    if not path.is_file():
        raise UsageError(f"AUDIO {shown(text)} is not a file; expected an audio file")
    return path


def run(args: argparse.Namespace) -> int:
    path = _check_audio(args.audio)
    prompt = None if args.prompt is None else check_sentence("--prompt", args.prompt, max_words=100)
    from ..models.whisper import load_audio, load_whisper, transcribe

    audio = load_audio(path)  # AudioError (one line, exit 2) for unreadable or empty files
    w = load_whisper()
    words = args.words or args.json is not None or args.picture is not None
    tr = transcribe(w, audio, beam_size=args.beam, words=words, condition_on_previous_text=not args.no_condition,
                    initial_prompt=prompt)
    print(tr.text)
    if args.words:
        for wt in tr.words:
            print(f"{wt.start:7.2f} {wt.end:7.2f}  {wt.word.strip()}")
    if args.json is not None:
        doc = {"audio": str(path), "duration": tr.duration, "text": tr.text, "beam": args.beam,
               "condition_on_previous_text": not args.no_condition, "initial_prompt": prompt,
               "segments": [{"start": s.start, "end": s.end, "text": s.text, "temperature": s.temperature,
                             "avg_logprob": s.avg_logprob,
                             "words": [{"word": x.word.strip(), "start": x.start, "end": x.end,
                                        "probability": x.probability} for x in s.words]} for s in tr.segments]}
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    if args.picture is not None:
        _picture(w, audio, tr, args.picture)
        print(f"wrote {args.picture}")
    return 0


def _picture(w, audio, tr, out: Path) -> None:
    import torch

    from ..apps.speech.pictures import cross_attention_picture
    from ..models.whisper import N_SAMPLES, align_words, log_mel_spectrogram

    x = torch.as_tensor(audio[:N_SAMPLES])
    mel = log_mel_spectrogram(x)
    with torch.no_grad():
        states = w.model.embed_audio(mel[None])
        tokens = [t for s in tr.segments if s.start < 30.0 for t in s.tokens if t < w.tokenizer.eot]
        al = align_words(w, states, tokens, x.numel())
    labels = ["<|notimestamps|>"] + [w.tokenizer.token_text(t) for t in al.tokens]
    cross_attention_picture(mel, al, labels, x.numel() / 16000, out, title=tr.text[:80])
