"""Speed of Whisper tiny.en transcription on CPU: attnkit's model against transformers' Whisper
(fp32, the same weights, the same greedy decoding with its own KV cache) and against CTranslate2
(fp32, the package's own ``model.bin``; benchmark only, if installed).

Every engine transcribes the same real clips (the five LibriVox utterances of
pocketsphinx-testdata, 24.7 s of speech) from the same log-mel features; the timed region is
the encoder plus greedy decoding of each clip (features excluded, computed once). Engines run
round-robin for ``--repeats`` rounds; the median round is reported as the real-time factor
(seconds of compute per second of audio, lower is faster) and as ratios to attnkit.

    python benchmarks/bench_whisper.py               # 3 rounds, 1 thread
    python benchmarks/bench_whisper.py --threads 2 --repeats 5
    python benchmarks/bench_whisper.py --part encoder   # the encoder alone, exact vs approximate attention

``--part encoder`` times one 30 s window through the encoder with each self-attention variant of
``attnkit.apps.speech.evaluate.ENCODER_VARIANTS`` (exact, sliding windows and BigBird through
block_sparse, LSH), round-robin, and writes ``benchmarks/results/whisper_encoder.json``.

Writes ``benchmarks/results/whisper.json``. Timings from a shared, loaded machine are noisy:
compare ratios measured in one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from attnkit.apps.speech.data import real_clips
from attnkit.models.whisper import decode, load_whisper, log_mel_spectrogram, whisper_dir

RESULTS = Path(__file__).parent / "results"


def engines(w, threads: int) -> dict[str, Callable[[torch.Tensor], list[int]]]:
    out: dict[str, Callable[[torch.Tensor], list[int]]] = {"attnkit": lambda mel: decode(w, mel).tokens}
    try:
        from attnkit.apps.speech.reference import hf_greedy, hf_whisper

        hf = hf_whisper(w)
        out["transformers fp32"] = lambda mel: hf_greedy(hf, w, mel)
    except ImportError:
        print("transformers not installed: skipped")
    try:
        import ctranslate2

        ct = ctranslate2.models.Whisper(str(whisper_dir()), device="cpu", compute_type="float32",
                                        intra_threads=threads)
        prompt = [w.tokenizer.sot_sequence()]
        suppress = sorted(set(w.suppress_tokens))

        def run_ct2(mel: torch.Tensor) -> list[int]:
            feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None].numpy()))
            res = ct.generate(feats, prompt, beam_size=1, suppress_blank=True, suppress_tokens=suppress,
                              max_length=w.model.config.n_text_ctx // 2)
            return list(res[0].sequences_ids[0])

        out["ctranslate2 fp32"] = run_ct2
    except ImportError:
        print("ctranslate2 not installed (pip install --no-deps ctranslate2==4.8.5): skipped")
    return out


@torch.inference_mode()
def bench_encoder(w, args: argparse.Namespace) -> None:
    from attnkit.apps.speech.evaluate import ENCODER_VARIANTS, _encode

    clip = next(c for c in real_clips() if c.group == "librivox")
    mel = log_mel_spectrogram(clip.audio())[None]
    names = list(ENCODER_VARIANTS)
    for n in names:  # warm-up (tile plans, first calls)
        _encode(w, mel, n)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            t0 = time.perf_counter()
            _encode(w, mel, n)
            times[n].append(time.perf_counter() - t0)
    base = statistics.median(times[names[0]])
    rows = {}
    print(f"encoder, one 30 s window (1,500 positions), {args.threads} thread(s), median of {args.repeats} rounds")
    for n in names:
        med = statistics.median(times[n])
        rows[n] = {"seconds": med, "ratio_to_exact": med / base, "all": times[n]}
        print(f"{n:<36} {1000 * med:8.0f} ms  {med / base:5.2f}x exact")
    out = args.out if args.out != RESULTS / "whisper.json" else RESULTS / "whisper_encoder.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                               "note": "measured on a shared, loaded machine", "variants": rows}, indent=2))
    print(f"wrote {out}")


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("transcribe", "encoder"), default="transcribe")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clips", default="librivox", help="clip group to transcribe (default librivox)")
    p.add_argument("--out", type=Path, default=RESULTS / "whisper.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    w = load_whisper()
    if args.part == "encoder":
        bench_encoder(w, args)
        return
    clips = [c for c in real_clips() if c.group == args.clips]
    audio = [c.audio() for c in clips]
    mels = [log_mel_spectrogram(x) for x in audio]
    seconds = sum(len(x) for x in audio) / 16000
    eng = engines(w, args.threads)
    tokens = {name: [f(m) for m in mels] for name, f in eng.items()}  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {name: [] for name in eng}
    for _ in range(args.repeats):
        for name, f in eng.items():
            t0 = time.perf_counter()
            for m in mels:
                f(m)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["attnkit"])
    rows = {}
    print(f"{len(clips)} clips, {seconds:.1f} s of audio, {args.threads} thread(s), median of {args.repeats} rounds")
    print(f"{'engine':<20} {'seconds':>8} {'RTF':>8} {'time / attnkit':>15}  same tokens as attnkit")
    for name, ts in times.items():
        med = statistics.median(ts)
        same = sum(a == b for a, b in zip(tokens[name], tokens["attnkit"]))
        rows[name] = {"seconds": med, "rtf": med / seconds, "ratio_to_attnkit": med / base, "all": ts,
                      "same_tokens": f"{same}/{len(clips)}"}
        print(f"{name:<20} {med:8.2f} {med / seconds:8.3f} {med / base:15.2f}x  {same}/{len(clips)}")
    for name in rows:
        if name != "attnkit":
            print(f"attnkit is {rows[name]['seconds'] / base:.2f}x as fast as {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clips": [c.name for c in clips], "audio_seconds": seconds,
                                    "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                                    "machine": platform.processor() or platform.machine(),
                                    "note": "measured on a shared, loaded machine", "engines": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
