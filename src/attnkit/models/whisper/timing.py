"""Word timings from cross-attention, Whisper's method: run the decoder over the transcript, take
the cross-attention weights of chosen *alignment heads*, renormalise them over the audio's
frames, standardise each head over the tokens, smooth with a median filter along time, average
the heads, and find the monotonic token-to-frame path by dynamic time warping; a word starts at
the frame where the path enters its first token and ends where it enters the next word.
Audio positions are 20 ms apart.

:func:`find_alignment_heads` ranks every (layer, head) by the word-boundary error it gives alone
on clips whose word times are known.

Shape legend: L decoder layers, H heads, K chosen heads, T tokens, S audio positions.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AttnKitError
from .features import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from .files import Whisper

__all__ = ["WordTiming", "AlignmentResult", "dtw", "median_filter", "cross_attention_weights", "alignment_matrix",
           "align_words", "word_timings", "timing_errors", "find_alignment_heads", "split_words",
           "refine_with_energy", "trim_to_attention", "TRIM_FRACTION", "SECONDS_PER_POSITION"]

SECONDS_PER_POSITION = 0.02  # one audio position = two 10 ms mel frames
_PREPEND = "\"'“¿([{-"
_APPEND = "\"'.。,，!！?？:：”)]}、"


@dataclass
class WordTiming:
    word: str  # as decoded, with its leading space
    start: float  # seconds
    end: float
    tokens: list[int]
    probability: float


@dataclass
class AlignmentResult:
    words: list[WordTiming]
    matrix: np.ndarray  # (T, S') the averaged, filtered head weights over the audio's positions
    path: tuple[np.ndarray, np.ndarray]  # DTW path: token rows and positions
    tokens: list[int]  # the text tokens aligned


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding ``width`` (odd) along the last dim, reflecting at the edges."""
    if width < 1 or width % 2 == 0:
        raise AttnKitError(f"median filter width must be a positive odd number; got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    shape = x.shape
    y = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect").reshape(*shape[:-1], -1)
    return y.unfold(-1, width, 1).sort(dim=-1).values[..., pad]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic path of least total ``cost (N, M)`` from (0, 0) to (N-1, M-1) with steps down,
    right or diagonal; returns row and column indices along it (ties prefer a step right)."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise AttnKitError(f"dtw needs a non-empty 2-D cost matrix; got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise AttnKitError("dtw cost matrix holds NaN or infinite values")
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    acc[0, 0] = 0.0
    for j in range(1, m + 1):
        prev = acc[:, j - 1]
        for i in range(1, n + 1):
            c0, c1, c2 = prev[i - 1], acc[i - 1, j], prev[i]
            if c0 < c1 and c0 < c2:
                acc[i, j], trace[i, j] = cost[i - 1, j - 1] + c0, 0
            elif c1 < c0 and c1 < c2:
                acc[i, j], trace[i, j] = cost[i - 1, j - 1] + c1, 1
            else:
                acc[i, j], trace[i, j] = cost[i - 1, j - 1] + c2, 2
    trace[0, :], trace[:, 0] = 2, 1
    i, j, rows, cols = n, m, [], []
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


@torch.no_grad()
def cross_attention_weights(w: Whisper, audio_states: Tensor, tokens: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Run the decoder (uncached) over ``tokens``; return the cross-attention weights
    ``(L, H, T, S)`` and the logits ``(T, V)``."""
    ids = torch.tensor([list(tokens)])
    logits, weights = w.model.decoder(ids, audio_states, need_weights=True)
    return torch.cat(weights, dim=0), logits[0]  # (L, H, T, S), (T, V)


def alignment_matrix(weights: Tensor, heads: Sequence[tuple[int, int]], n_positions: int,
                     medfilt_width: int = 7) -> Tensor:
    """``weights (L, H, T, S)`` -> the alignment matrix ``(T, n_positions)`` of the chosen heads:
    renormalised over the first ``n_positions`` positions, standardised over tokens per head,
    median-filtered along time, averaged over heads."""
    if not heads:
        raise AttnKitError("alignment_matrix needs at least one (layer, head)")
    n_layers, n_heads = weights.shape[:2]
    for lh in heads:
        if not (0 <= lh[0] < n_layers and 0 <= lh[1] < n_heads):
            raise AttnKitError(f"alignment head {tuple(lh)} is outside the model's {n_layers} layers x {n_heads} heads")
    sel = torch.stack([weights[lyr, h] for lyr, h in heads]).float()  # (K, T, S)
    sel = sel[:, :, :n_positions]
    sel = sel / sel.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # softmax over the audio's positions only
    std, mean = torch.std_mean(sel, dim=-2, keepdim=True, unbiased=False)
    sel = (sel - mean) / std.clamp_min(1e-12)
    sel = median_filter(sel, medfilt_width)
    return sel.mean(dim=0)  # (T, S')


def split_words(w: Whisper, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Group text tokens into words: a word starts at a token beginning with a space, at
    punctuation, or at a special token."""
    words: list[str] = []
    groups: list[list[int]] = []
    run: list[int] = []
    pieces: list[tuple[str, list[int]]] = []
    for t in tokens:  # join tokens until they decode to whole characters
        run.append(t)
        text = w.tokenizer.decode(run) if t < w.tokenizer.eot else "<|special|>"
        if "\ufffd" not in text:
            pieces.append((text, run))
            run = []
    for text, toks in pieces:
        special = toks[0] >= w.tokenizer.eot
        if special or text.startswith(" ") or text.strip() in string.punctuation or not words:
            words.append(text)
            groups.append(list(toks))
        else:
            words[-1] += text
            groups[-1].extend(toks)
    return words, groups


def _merge_punctuation(timings: list[WordTiming]) -> list[WordTiming]:
    out: list[WordTiming] = []
    pending: WordTiming | None = None
    for wt in timings:
        bare = wt.word.strip()
        if bare and all(c in _PREPEND for c in bare) and wt.word.startswith(" "):
            pending = wt if pending is None else pending
            continue
        if pending is not None:
            wt = WordTiming(pending.word + wt.word.lstrip(), wt.start, wt.end, pending.tokens + wt.tokens,
                            wt.probability)
            pending = None
        if out and bare and all(c in _APPEND for c in bare) and not wt.word.startswith(" "):
            last = out[-1]
            out[-1] = WordTiming(last.word + wt.word, last.start, last.end, last.tokens + wt.tokens, last.probability)
            continue
        out.append(wt)
    return out


TRIM_FRACTION = 0.6  # chosen on the head-finding clips (docs/apps/speech.md), not on the test clips


def trim_to_attention(matrix: np.ndarray, spans: Sequence[tuple[int, int]], rows: Sequence[tuple[int, int]],
                      fraction: float = TRIM_FRACTION) -> list[tuple[int, int]]:
    """Shrink each word's DTW span to where its own attention is strong.

    DTW gives every position to some token, so a pause goes to a neighbouring word. For word ``k``
    with positions ``spans[k] = (a, b)`` and matrix rows ``rows[k] = (r0, r1)``, take the profile
    ``matrix[r0:r1, a:b].max(0)`` and keep the positions from the first to the last where it reaches
    ``fraction`` of its peak. A span whose profile never rises above zero (the average over tokens)
    is kept whole. Returns the new ``(a, b)`` (b exclusive)."""
    if not 0.0 < fraction < 1.0:
        raise AttnKitError(f"trim fraction must be in (0, 1); got {fraction}")
    out = []
    for (a, b), (r0, r1) in zip(spans, rows):
        prof = matrix[r0:r1, a:b].max(axis=0) if b > a and r1 > r0 else np.zeros(0)
        if prof.size == 0 or prof.max() <= 0:
            out.append((a, b))
            continue
        keep = np.flatnonzero(prof >= fraction * prof.max())
        out.append((a + int(keep[0]), a + int(keep[-1]) + 1))
    return out


def align_words(w: Whisper, audio_states: Tensor, text_tokens: Sequence[int], n_samples: int, *,
                heads: Sequence[tuple[int, int]] | None = None, medfilt_width: int = 7,
                weights: Tensor | None = None, trim: float | None = TRIM_FRACTION) -> AlignmentResult:
    """Word timings (seconds from the window start) of ``text_tokens`` spoken in a 30 s window whose
    audio states are ``audio_states (1, S, E)``; ``n_samples`` is the audio's length within it.

    ``trim`` shrinks each word's DTW span with :func:`trim_to_attention` (None: Whisper's contiguous
    spans, where a word ends where the next begins)."""
    tok = w.tokenizer
    text_tokens = [t for t in text_tokens if t < tok.eot]
    if not text_tokens:
        return AlignmentResult([], np.zeros((0, 0)), (np.zeros(0), np.zeros(0)), [])
    prompt = tok.sot_sequence(timestamps=False)
    seq = [*prompt, *text_tokens, tok.eot]
    logits = None
    if weights is None:
        weights, logits = cross_attention_weights(w, audio_states, seq)
    n_pos = max(1, min(weights.shape[-1], -(-min(n_samples, N_SAMPLES) // (SAMPLE_RATE // 50))))  # 20 ms positions
    matrix = alignment_matrix(weights, heads or w.alignment_heads, n_pos, medfilt_width)
    matrix = matrix[len(prompt) - 1: -1]  # rows: no-timestamps, then each text token
    rows, cols = dtw(-matrix.double().numpy())
    words, groups = split_words(w, [*text_tokens, tok.eot])
    bounds = np.concatenate([[0], np.cumsum([len(g) for g in groups[:-1]])])
    jumps = np.concatenate([[True], np.diff(rows) != 0])
    jump_times = cols[jumps] * SECONDS_PER_POSITION  # (len(text_tokens) + 1,)
    starts, ends = jump_times[bounds[:-1]], jump_times[bounds[1:]]
    if trim is not None:
        pos = np.rint(np.stack([starts, ends], 1) / SECONDS_PER_POSITION).astype(int)
        spans = trim_to_attention(matrix.double().numpy(), [tuple(p) for p in pos],
                                  [(int(bounds[k]), int(bounds[k + 1])) for k in range(len(bounds) - 1)], trim)
        starts = np.array([a for a, _ in spans]) * SECONDS_PER_POSITION
        ends = np.array([b for _, b in spans]) * SECONDS_PER_POSITION
    if logits is not None:
        probs = torch.softmax(logits.float(), dim=-1)
        tok_p = [float(probs[len(prompt) - 1 + i, t]) for i, t in enumerate(text_tokens)]
    else:
        tok_p = [float("nan")] * len(text_tokens)
    timings, k = [], 0
    for word, g, s, e in zip(words[:-1], groups[:-1], starts, ends):
        p = float(np.mean(tok_p[k: k + len(g)]))
        k += len(g)
        timings.append(WordTiming(word, float(s), float(e), g, p))
    return AlignmentResult(_merge_punctuation(timings), matrix.numpy(), (rows, cols), list(text_tokens))


@torch.no_grad()
def word_timings(w: Whisper, audio: np.ndarray | Tensor, text: str | None = None, *,
                 heads: Sequence[tuple[int, int]] | None = None) -> list[WordTiming]:
    """Word timings of 16 kHz ``audio`` (at most 30 s) for ``text`` (forced alignment), or for the
    greedy transcript when ``text`` is None."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.dim() != 1 or x.numel() == 0:
        raise AttnKitError(f"audio must be (N,) 16 kHz samples with N > 0; got shape {tuple(x.shape)}")
    if x.numel() > N_SAMPLES:
        raise AttnKitError(f"word_timings takes at most 30 s of audio; got {x.numel() / SAMPLE_RATE:.1f} s "
                           "(use transcribe(..., words=True) for longer audio)")
    states = w.model.embed_audio(log_mel_spectrogram(x)[None])
    if text is None:
        from .decoding import decode

        tokens = decode(w, torch.empty(0), audio=states).tokens
    else:
        tokens = w.tokenizer.encode(" " + text.strip())
    return align_words(w, states, tokens, x.numel(), heads=heads).words


def refine_with_energy(words: Sequence[WordTiming], audio: np.ndarray | Tensor, *, threshold_db: float = -40.0,
                       offset: float = 0.0) -> list[WordTiming]:
    """Shrink each word's span to the voiced part of the audio inside it: DTW gives contiguous
    spans (a word ends where the next begins), so a pause is split between its neighbours; this
    moves each start forward to the first 10 ms frame louder than ``threshold_db`` below the
    clip's loudest frames, and each end back to the last such frame (spans only shrink; a span
    with no loud frame is kept). ``offset`` is the time of ``audio``'s first sample."""
    x = torch.as_tensor(audio, dtype=torch.float32).numpy()
    hop = SAMPLE_RATE // 100
    n = len(x) // hop
    if n == 0:
        return list(words)
    energy = (x[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    ref = max(float(np.percentile(energy, 99)), 1e-12)
    loud = 10 * np.log10(np.maximum(energy, 1e-12) / ref) > threshold_db
    out = []
    for wt in words:
        a, b = int(round((wt.start - offset) * 100)), int(round((wt.end - offset) * 100))
        idx = np.flatnonzero(loud[max(a, 0): min(b, n)])
        if idx.size:
            start = offset + (max(a, 0) + idx[0]) / 100
            end = offset + (max(a, 0) + idx[-1] + 1) / 100
            wt = WordTiming(wt.word, float(start), float(end), wt.tokens, wt.probability)
        out.append(wt)
    return out


def timing_errors(predicted: Sequence[WordTiming], reference: Sequence[tuple[str, float, float]]) -> dict[str, float]:
    """Absolute start and end errors (ms) of word timings against ``(word, start, end)`` references,
    matched in order; the word counts must agree."""
    if len(predicted) != len(reference):
        raise AttnKitError(f"timing_errors needs as many predicted words ({len(predicted)}) as reference words "
                           f"({len(reference)}): {[p.word for p in predicted]} vs {[r[0] for r in reference]}")
    if not reference:
        raise AttnKitError("timing_errors needs at least one word")
    s = np.array([abs(p.start - r[1]) for p, r in zip(predicted, reference)]) * 1000
    e = np.array([abs(p.end - r[2]) for p, r in zip(predicted, reference)]) * 1000
    both = np.concatenate([s, e])
    return {"start_mean_ms": float(s.mean()), "start_median_ms": float(np.median(s)), "end_mean_ms": float(e.mean()),
            "end_median_ms": float(np.median(e)), "mean_ms": float(both.mean()), "median_ms": float(np.median(both)),
            "words": len(reference)}


@torch.no_grad()
def find_alignment_heads(w: Whisper, clips: Sequence[tuple[np.ndarray, Sequence[tuple[str, float, float]]]], *,
                         top: int | None = None, medfilt_width: int = 7) -> list[tuple[tuple[int, int], float]]:
    """Rank every (layer, head) of the decoder's cross-attention by the median word-boundary error
    (ms) it gives alone, over ``clips`` of ``(audio (N,) at 16 kHz, [(word, start s, end s), ...])``;
    returns ``[((layer, head), error ms), ...]`` best first (the first ``top`` when given)."""
    if not clips:
        raise AttnKitError("find_alignment_heads needs at least one clip with known word timings")
    cfg = w.model.config
    errors: dict[tuple[int, int], list[float]] = {(lyr, h): [] for lyr in range(cfg.n_text_layer)
                                                  for h in range(cfg.n_text_head)}
    for audio, ref in clips:
        x = torch.as_tensor(audio, dtype=torch.float32)
        states = w.model.embed_audio(log_mel_spectrogram(x)[None])
        tokens = w.tokenizer.encode(" " + " ".join(r[0] for r in ref))
        seq = [*w.tokenizer.sot_sequence(timestamps=False), *tokens, w.tokenizer.eot]
        weights, _ = cross_attention_weights(w, states, seq)
        for head in errors:
            got = align_words(w, states, tokens, x.numel(), heads=[head], medfilt_width=medfilt_width,
                              weights=weights).words
            if len(got) != len(ref):
                errors[head].append(float("inf"))
                continue
            err = timing_errors(got, ref)
            errors[head].append(err["median_ms"])
    ranked = sorted(((h, float(np.median(e))) for h, e in errors.items()), key=lambda he: he[1])
    return ranked[:top] if top else ranked
