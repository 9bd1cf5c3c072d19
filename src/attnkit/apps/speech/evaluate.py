"""Evaluation of Whisper tiny.en on attnkit (the tables of ``docs/apps/speech.md``):

* ``wer``: word error rate (``jiwer``, after :func:`normalize_english`) on every real recording
  with a transcript, per clip and overall, greedy and beam 5, against transformers' Whisper with
  the same weights and the same greedy decoding (tokens compared clip by clip);
* ``synthetic``: WER on espeak-ng and flite speech (synthetic, labelled so);
* ``timing``: word-boundary errors on clips of separately synthesised words joined by known pauses,
  with OpenAI's alignment heads and with the heads :func:`find_alignment_heads` picks on other
  clips (other voices and words);
* ``long``: long audio (real recordings joined with silence, past 30 s) with and without
  conditioning each window on the previous window's text;
* ``approx``: the encoder's self-attention over 1,500 frames run exact, with sliding windows
  (block_sparse), BigBird (block_sparse) and LSH, reporting WER and encoder time.

Run ``python -m attnkit.apps.speech.evaluate --part all --out results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import masks, use_impl
from ...masks import patterns
from ...models.whisper import (
    OPENAI_ALIGNMENT_HEADS,
    Whisper,
    align_words,
    cross_attention_weights,
    decode,
    find_alignment_heads,
    load_whisper,
    log_mel_spectrogram,
    refine_with_energy,
    transcribe,
)
from ...models.whisper.decoding import DecodingOptions
from ...models.whisper.timing import TRIM_FRACTION
from ..trainer import write_json
from .data import Clip, TimedClip, real_clips, synthetic_clips, timed_clips
from .normalizer import normalize_english

__all__ = ["wer_rows", "summarize_wer", "markdown_tables", "evaluate_wer", "evaluate_synthetic", "evaluate_timing",
           "evaluate_long", "evaluate_approx", "ENCODER_VARIANTS", "HEAD_FINDING_VOICES", "HEAD_FINDING_WORDS"]

HEAD_FINDING_VOICES = (("espeak-ng", "en-us+m3"), ("flite", "rms"))
HEAD_FINDING_WORDS = (("green", "apples", "fall", "from", "tall", "trees"),
                      ("call", "my", "brother", "after", "dinner"),
                      ("the", "garden", "needs", "water", "today"))


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    r, h = normalize_english(ref), normalize_english(hyp)
    return float(jiwer.wer(r, h)) if r else float(bool(h))


def wer_rows(w: Whisper, clips: Sequence[Clip], *, beam_size: int = 1, log: Callable = print) -> list[dict[str, Any]]:
    """One row per clip: reference, hypothesis, WER, seconds of audio and of decoding."""
    rows = []
    for c in clips:
        x = c.audio()
        t0 = time.perf_counter()
        tr = transcribe(w, x, beam_size=beam_size)
        rows.append({"clip": c.name, "group": c.group, "synthetic": c.synthetic, "reference": c.reference,
                     "hypothesis": tr.text, "wer": _wer(c.reference, tr.text), "audio_s": len(x) / 16000,
                     "decode_s": time.perf_counter() - t0})
        log(f"  {c.name}: WER {100 * rows[-1]['wer']:.1f}%  {tr.text}")
    return rows


def summarize_wer(rows: Sequence[dict[str, Any]], key: str = "hypothesis") -> dict[str, float]:
    """Corpus WER (errors over reference words) per group and overall."""
    import jiwer

    out = {}
    groups = sorted({r["group"] for r in rows})
    for g in [*groups, "all"]:
        sel = [r for r in rows if g == "all" or r["group"] == g]
        out[g] = float(jiwer.wer([normalize_english(r["reference"]) for r in sel],
                                 [normalize_english(r[key]) for r in sel]))
    return out


def evaluate_wer(w: Whisper, log: Callable = print) -> dict[str, Any]:
    """Real clips: attnkit greedy and beam 5, transformers' greedy (same weights, same rules)."""
    from .reference import hf_greedy, hf_whisper

    clips = real_clips()
    log("real clips, greedy:")
    greedy = wer_rows(w, clips, log=log)
    log("real clips, beam 5:")
    beam = wer_rows(w, clips, beam_size=5, log=log)
    hf = hf_whisper(w)
    same = 0
    for c, row, brow in zip(clips, greedy, beam):
        mel = log_mel_spectrogram(c.audio())
        ours = decode(w, mel).tokens
        theirs = hf_greedy(hf, w, mel, DecodingOptions())
        row["beam5"] = brow["hypothesis"]
        row["wer_beam5"] = brow["wer"]
        row["transformers"] = w.tokenizer.decode(theirs)
        row["wer_transformers"] = _wer(c.reference, row["transformers"])
        row["same_tokens"] = ours == theirs
        same += ours == theirs
    return {"rows": greedy, "greedy": summarize_wer(greedy), "beam5": summarize_wer(greedy, "beam5"),
            "transformers": summarize_wer(greedy, "transformers"), "same_tokens": f"{same}/{len(clips)}"}


def evaluate_synthetic(w: Whisper, log: Callable = print) -> dict[str, Any]:
    log("synthetic clips (espeak-ng, flite), greedy:")
    rows = wer_rows(w, synthetic_clips(), log=log)
    return {"rows": rows, "greedy": summarize_wer(rows)}


def _clip_weights(w: Whisper, clip: TimedClip) -> tuple[torch.Tensor, list[int], torch.Tensor, int]:
    x = torch.as_tensor(clip.audio)
    states = w.model.embed_audio(log_mel_spectrogram(x)[None])
    tokens = w.tokenizer.encode(" " + " ".join(word for word, _, _ in clip.words))
    seq = [*w.tokenizer.sot_sequence(), *tokens, w.tokenizer.eot]
    weights, _ = cross_attention_weights(w, states, seq)
    return states, tokens, weights, x.numel()


def _timing_with(w: Whisper, prepared: list, clips: Sequence[TimedClip], heads,
                 refine: bool = False, trim: float | None = TRIM_FRACTION) -> dict[str, float]:
    starts, ends = [], []
    for (states, tokens, weights, n), clip in zip(prepared, clips):
        got = align_words(w, states, tokens, n, heads=heads, weights=weights, trim=trim).words
        if refine:
            got = refine_with_energy(got, clip.audio)
        if len(got) != len(clip.words):
            raise RuntimeError(f"{clip.name}: {len(got)} words aligned for {len(clip.words)}")
        starts += [abs(g.start - r[1]) * 1000 for g, r in zip(got, clip.words)]
        ends += [abs(g.end - r[2]) * 1000 for g, r in zip(got, clip.words)]
    both = starts + ends
    return {"start_mean_ms": float(np.mean(starts)), "start_median_ms": float(np.median(starts)),
            "end_mean_ms": float(np.mean(ends)), "end_median_ms": float(np.median(ends)),
            "mean_ms": float(np.mean(both)), "median_ms": float(np.median(both)), "words": len(starts)}


@torch.no_grad()
def evaluate_timing(w: Whisper, log: Callable = print) -> dict[str, Any]:
    """Word-boundary error with OpenAI's heads, with every single head, and with found heads."""
    test = timed_clips()
    finding = timed_clips(HEAD_FINDING_VOICES, HEAD_FINDING_WORDS, seed=1)
    prep_test = [_clip_weights(w, c) for c in test]
    prep_find = [_clip_weights(w, c) for c in finding]
    ranked = find_alignment_heads(w, [(c.audio, c.words) for c in finding])
    log("heads ranked on the head-finding clips: " + ", ".join(f"{h}:{e:.0f}ms" for h, e in ranked[:10]))
    best_k, best = 1, float("inf")
    for k in range(1, 9):  # how many of the best heads to average, chosen on the head-finding clips
        err = _timing_with(w, prep_find, finding, [h for h, _ in ranked[:k]])["median_ms"]
        if err < best - 1e-9:
            best_k, best = k, err
    found = [h for h, _ in ranked[:best_k]]
    fractions = {f: _timing_with(w, prep_find, finding, OPENAI_ALIGNMENT_HEADS, trim=f)["median_ms"]
                 for f in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}
    log("trim fraction on the head-finding clips (median ms): "
        + ", ".join(f"{f}: {e:.0f}" for f, e in fractions.items()))
    out = {"test_clips": len(test), "finding_clips": len(finding), "trim_fraction_on_finding_clips": fractions,
           "openai_heads_dtw": {"heads": [list(h) for h in OPENAI_ALIGNMENT_HEADS],
                                **_timing_with(w, prep_test, test, OPENAI_ALIGNMENT_HEADS, trim=None)},
           "found_heads_dtw": {"heads": [list(h) for h in found],
                               **_timing_with(w, prep_test, test, found, trim=None)},
           "openai_heads": {"heads": [list(h) for h in OPENAI_ALIGNMENT_HEADS],
                            **_timing_with(w, prep_test, test, OPENAI_ALIGNMENT_HEADS)},
           "found_heads": {"heads": [list(h) for h in found], **_timing_with(w, prep_test, test, found)},
           "openai_heads_energy": {"heads": [list(h) for h in OPENAI_ALIGNMENT_HEADS],
                                   **_timing_with(w, prep_test, test, OPENAI_ALIGNMENT_HEADS, refine=True, trim=None)},
           "found_heads_energy": {"heads": [list(h) for h in found],
                                  **_timing_with(w, prep_test, test, found, refine=True, trim=None)},
           "ranked": [[list(h), e] for h, e in ranked]}
    for name in ("openai_heads_dtw", "found_heads_dtw", "openai_heads", "found_heads", "openai_heads_energy",
                 "found_heads_energy"):
        r = out[name]
        log(f"{name} {r['heads']}: start mean/median {r['start_mean_ms']:.0f}/{r['start_median_ms']:.0f} ms, "
            f"end {r['end_mean_ms']:.0f}/{r['end_median_ms']:.0f} ms")
    return out


def long_audio_sets() -> dict[str, tuple[list[Clip], float]]:
    """Long test audio: ``{name: (clips joined in order, seconds of silence between them)}``."""
    clips = real_clips()
    return {"5 LibriVox utterances, 1.5 s gaps": ([c for c in clips if c.group == "librivox"], 1.5),
            "all 12 real clips, 1 s gaps": (clips, 1.0)}


@torch.no_grad()
def evaluate_long(w: Whisper, log: Callable = print) -> dict[str, Any]:
    """WER of long audio transcribed with and without conditioning on the previous window's text."""
    out: dict[str, Any] = {}
    for name, (clips, gap_s) in long_audio_sets().items():
        gap = np.zeros(int(gap_s * 16000), np.float32)
        x = np.concatenate([p for c in clips for p in (c.audio(), gap)])
        ref = " ".join(c.reference for c in clips)
        row: dict[str, Any] = {"audio_s": len(x) / 16000, "words": len(normalize_english(ref).split())}
        for key, cond in (("conditioned", True), ("not_conditioned", False)):
            tr = transcribe(w, x, condition_on_previous_text=cond)
            row[key] = {"wer": _wer(ref, tr.text), "text": tr.text, "segments": len(tr.segments),
                        "temperatures": [s.temperature for s in tr.segments]}
            log(f"  {name} ({row['audio_s']:.1f} s) {key}: WER {100 * row[key]['wer']:.1f}%")
        out[name] = row
    return out


# name -> (implementation to pin or None, mask factory or None, options)
ENCODER_VARIANTS: dict[str, tuple[str | None, Callable[[], Any] | None, dict[str, Any]]] = {
    "exact (auto)": (None, None, {}),
    "window 512 (block_sparse)": ("block_sparse", lambda: masks.window(512), {}),
    "window 256 (block_sparse)": ("block_sparse", lambda: masks.window(256), {}),
    "window 128 (block_sparse)": ("block_sparse", lambda: masks.window(128), {}),
    "window 64 (block_sparse)": ("block_sparse", lambda: masks.window(64), {}),
    "bigbird block 64 (block_sparse)": ("block_sparse", lambda: patterns.bigbird(64), {}),
    "lsh 4 hashes, bucket 64": ("lsh", None, {"bucket_size": 64, "n_hashes": 4}),
}


def _encode(w: Whisper, mel: torch.Tensor, variant: str) -> torch.Tensor:
    impl, make_mask, options = ENCODER_VARIANTS[variant]
    mask = make_mask() if make_mask else None
    if impl is None:
        return w.model.embed_audio(mel, mask, options or None)
    with use_impl(impl):
        return w.model.embed_audio(mel, mask, options or None)


@torch.no_grad()
def evaluate_approx(w: Whisper, log: Callable = print, repeats: int = 3) -> dict[str, Any]:
    """WER on the real clips and median encoder time (one 30 s window) per encoder variant."""
    clips = real_clips()
    mels = [log_mel_spectrogram(c.audio())[None] for c in clips]
    out = {}
    for name in ENCODER_VARIANTS:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _encode(w, mels[0], name)
            times.append(time.perf_counter() - t0)
        hyps = []
        for mel in mels:
            states = _encode(w, mel, name)
            hyps.append(decode(w, mel, audio=states).text)
        rows = [{"group": c.group, "reference": c.reference, "hypothesis": h} for c, h in zip(clips, hyps)]
        wer = summarize_wer(rows)
        out[name] = {"wer_all": wer["all"], "wer_librivox": wer.get("librivox"), "encoder_s": statistics.median(times),
                     "hypotheses": hyps}
        log(f"  {name}: WER {100 * wer['all']:.1f}% (librivox {100 * wer['librivox']:.1f}%), "
            f"encoder {1000 * statistics.median(times):.0f} ms")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_tables(results: dict[str, Any]) -> str:
    """The Markdown tables of ``docs/apps/speech.md`` from a results file (WERs are recomputed from
    the stored references and hypotheses with the current normaliser)."""
    lines: list[str] = []
    if "wer" in results:
        rows = results["wer"]["rows"]
        lines += ["| clip | reference | attnkit greedy | WER % | beam 5 WER % | transformers WER % | same tokens |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['clip'].split('/')[-1]} | {r['reference']} | {r['hypothesis'].strip()} | "
                         f"{_pct(_wer(r['reference'], r['hypothesis']))} | "
                         f"{_pct(_wer(r['reference'], r['beam5']))} | "
                         f"{_pct(_wer(r['reference'], r['transformers']))} | {'yes' if r['same_tokens'] else 'no'} |")
        lines += ["", "| group | clips | words | attnkit greedy WER % | attnkit beam 5 WER % "
                      "| transformers greedy WER % |", "|---|---|---|---|---|---|"]
        g, b, t = summarize_wer(rows), summarize_wer(rows, "beam5"), summarize_wer(rows, "transformers")
        for k in g:
            sel = [r for r in rows if k == "all" or r["group"] == k]
            n_words = sum(len(normalize_english(r["reference"]).split()) for r in sel)
            lines.append(f"| {k} | {len(sel)} | {n_words} | {_pct(g[k])} | {_pct(b[k])} | {_pct(t[k])} |")
        lines.append("")
    if "synthetic" in results:
        rows = results["synthetic"]["rows"]
        lines += ["| SYNTHETIC voice | clips | words | WER % | worst clip |", "|---|---|---|---|---|"]
        summ = summarize_wer(rows)
        for k, v in summ.items():
            sel = [r for r in rows if k == "all" or r["group"] == k]
            worst = max(sel, key=lambda r: _wer(r["reference"], r["hypothesis"]))
            n_words = sum(len(r["reference"].split()) for r in sel)
            lines.append(f"| {k} | {len(sel)} | {n_words} | {_pct(v)} | {worst['hypothesis'].strip()} |")
        lines.append("")
    if "timing" in results:
        t = results["timing"]
        lines += ["| heads | start mean / median ms | end mean / median ms | all boundaries mean / median ms |",
                  "|---|---|---|---|"]
        for name in ("openai_heads_dtw", "found_heads_dtw", "openai_heads", "found_heads", "openai_heads_energy",
                     "found_heads_energy"):
            if name not in t:
                continue
            r = t[name]
            heads = " ".join(f"{a}.{b}" for a, b in r["heads"])
            label = name.replace("_energy", " + energy refinement").replace("_", " ")
            lines.append(f"| {label}: {heads} | {r['start_mean_ms']:.0f} / {r['start_median_ms']:.0f} "
                         f"| {r['end_mean_ms']:.0f} / {r['end_median_ms']:.0f} | {r['mean_ms']:.0f} / "
                         f"{r['median_ms']:.0f} |")
        lines.append("")
    if "long" in results:
        lines += ["| long audio | seconds | words | WER % conditioned | WER % not conditioned |",
                  "|---|---|---|---|---|"]
        for name, r in results["long"].items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {r['audio_s']:.1f} | {r['words']} | {_pct(r['conditioned']['wer'])} | "
                             f"{_pct(r['not_conditioned']['wer'])} |")
        lines.append("")
    if "approx" in results:
        clips = real_clips()
        lines += ["| encoder self-attention | WER % (all 12) | WER % (LibriVox) | encoder ms (one 30 s window) |",
                  "|---|---|---|---|"]
        for name, r in results["approx"].items():
            if not isinstance(r, dict):
                continue
            rows = [{"group": c.group, "reference": c.reference, "hypothesis": h}
                    for c, h in zip(clips, r["hypotheses"])]
            wer = summarize_wer(rows)
            lines.append(f"| {name} | {_pct(wer['all'])} | {_pct(wer['librivox'])} | {1000 * r['encoder_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("wer", "synthetic", "timing", "long", "approx", "all"), default="all")
    p.add_argument("--out", type=Path, default=Path("speech-results.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tables", action="store_true", help="print the Markdown tables of --out and exit")
    args = p.parse_args(argv)
    if args.tables:
        print(markdown_tables(json.loads(args.out.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    w = load_whisper()
    parts = ("wer", "synthetic", "timing", "long", "approx") if args.part == "all" else (args.part,)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    funcs = {"wer": evaluate_wer, "synthetic": evaluate_synthetic, "timing": evaluate_timing,
             "long": evaluate_long, "approx": evaluate_approx}
    for part in parts:
        t0 = time.perf_counter()
        results[part] = funcs[part](w)
        results[part]["seconds"] = time.perf_counter() - t0
        write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
