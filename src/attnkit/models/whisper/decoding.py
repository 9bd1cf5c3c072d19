"""Decoding Whisper: greedy (or sampled at a temperature) and beam search over the KV-cached
decoder, with the logit rules Whisper uses (suppressed tokens, a blank-free first token,
timestamp pairing and monotonicity, an initial timestamp of at most 1 s, a timestamp forced when
the timestamp tokens together outweigh every text token); :func:`transcribe` adds temperature
fallback on repetitive (gzip compression ratio > 2.4) or unlikely (mean log-probability < -1)
output and long audio in 30 s windows.

Shape legend: B beams (or batch), M mel bins, F frames, S audio positions, V vocabulary.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ...errors import AttnKitError, ShapeError
from .features import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, log_mel_spectrogram
from .files import Whisper
from .tokenizer import TIME_STEP

__all__ = ["DecodingOptions", "DecodingResult", "Segment", "Transcript", "decode", "transcribe",
           "compression_ratio", "TEMPERATURES"]

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
INPUT_STRIDE = 2  # mel frames per audio position
FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 10 ms


@dataclass(frozen=True)
class DecodingOptions:
    """How one 30 s window is decoded."""

    beam_size: int = 1  # 1: greedy (or sampling when temperature > 0)
    temperature: float = 0.0
    timestamps: bool = False  # predict timestamp tokens (segment times)
    max_tokens: int = 224  # sampled tokens at most (half the decoder's context, as Whisper)
    length_penalty: float | None = None  # beam ranking: None = log p / length, else Google NMT's penalty
    max_initial_timestamp: float = 1.0  # seconds
    use_cache: bool = True  # KV-cached decoder (False recomputes every step; for tests)
    seed: int = 0  # sampling seed


@dataclass
class DecodingResult:
    tokens: list[int]  # sampled tokens, timestamps included, without the prompt and end of text
    text: str
    sum_logprob: float
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    words: list = field(default_factory=list)  # WordTiming objects when asked for


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    duration: float  # seconds of audio

    @property
    def words(self) -> list:
        return [w for s in self.segments for w in s.words]


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression (repetitive text scores high)."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


class LogitRules:
    """Whisper's logit filters for one decoding, applied in place to ``logits (B, V)``."""

    def __init__(self, w: Whisper, opts: DecodingOptions, sample_begin: int):
        tok = w.tokenizer
        self.eot, self.ts_begin, self.sample_begin = tok.eot, tok.timestamp_begin, sample_begin
        self.n_vocab = w.model.config.n_vocab
        sp = tok.special
        specials = list(range(sp.sot, sp.no_timestamps))  # sot, languages, tasks, prev, lm, no speech
        self.suppress = torch.tensor(sorted(set(w.suppress_tokens) | set(specials)), dtype=torch.long)
        self.begin = torch.tensor(list(w.suppress_begin), dtype=torch.long)
        self.timestamps = opts.timestamps
        self.no_timestamps = sp.no_timestamps
        self.max_initial = int(round(opts.max_initial_timestamp / TIME_STEP))

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        """``logits (B, V)`` of the next token after ``tokens (B, L)`` (prompt included)."""
        neg = -float("inf")
        logits[:, self.suppress] = neg
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.begin] = neg
        if not self.timestamps:
            logits[:, self.ts_begin - 1:] = neg  # no-timestamps and every timestamp
            return logits
        logits[:, self.no_timestamps] = neg
        for k in range(tokens.shape[0]):
            seq = tokens[k, self.sample_begin:].tolist()
            last = len(seq) >= 1 and seq[-1] >= self.ts_begin
            penultimate = len(seq) < 2 or seq[-2] >= self.ts_begin
            if last:
                if penultimate:  # a pair just closed: text (or end) comes next
                    logits[k, self.ts_begin:] = neg
                else:  # a timestamp opened: another timestamp or end, not text
                    logits[k, : self.eot] = neg
            stamps = [t for t in seq if t >= self.ts_begin]
            if stamps:  # timestamps never go back (and a new segment starts after the last end)
                floor = stamps[-1] if (last and not penultimate) else stamps[-1] + 1
                logits[k, self.ts_begin: floor] = neg
        if tokens.shape[1] == self.sample_begin:
            logits[:, : self.ts_begin] = neg  # the first token is a timestamp
            logits[:, self.ts_begin + self.max_initial + 1:] = neg
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ts_mass = logprobs[:, self.ts_begin:].logsumexp(dim=-1)
        text_best = logprobs[:, : self.ts_begin].max(dim=-1).values
        logits[ts_mass > text_best, : self.ts_begin] = neg
        return logits


class _Stepper:
    """Runs the decoder one step at a time (KV-cached) or over the whole prefix (uncached)."""

    def __init__(self, w: Whisper, audio: Tensor, use_cache: bool):
        self.model, self.audio, self.use_cache = w.model, audio, use_cache
        self.state = w.model.decoder.new_state() if use_cache else None
        self.fed = 0

    def __call__(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, V)`` after the last of ``tokens (B, L)``."""
        if self.state is None:
            return self.model.decoder(tokens, self.audio, last_only=True)[0][:, -1]
        new = tokens[:, self.fed:]
        logits = self.model.decoder(new, self.audio if self.fed == 0 else None, self.state, last_only=True)[0]
        self.fed = tokens.shape[1]
        return logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        if self.state is not None:
            self.state.reorder(index)


def _check_mel(w: Whisper, mel: Tensor) -> Tensor:
    if mel.dim() == 2:
        mel = mel[None]
    n = w.model.config.n_mels
    if mel.dim() != 3 or mel.shape[0] != 1 or mel.shape[1] != n:
        raise ShapeError(f"mel must be ({n}, F) or (1, {n}, F); got {tuple(mel.shape)}")
    return mel


@torch.no_grad()
def decode(w: Whisper, mel: Tensor, options: DecodingOptions | None = None, *, audio: Tensor | None = None,
           prompt: list[int] | None = None) -> DecodingResult:
    """Decode one window: ``mel (M, F)`` or ``(1, M, F)``; ``audio (1, S, E)`` reuses encoder output.

    ``prompt`` replaces the start-of-transcript sequence. Greedy when ``beam_size == 1`` (sampling
    when ``temperature > 0``), else beam search (at temperature 0).
    """
    opts = options or DecodingOptions()
    if opts.beam_size < 1:
        raise AttnKitError(f"beam_size must be >= 1; got {opts.beam_size}")
    if opts.temperature < 0:
        raise AttnKitError(f"temperature must be >= 0; got {opts.temperature}")
    tok = w.tokenizer
    if audio is None:
        audio = w.model.embed_audio(_check_mel(w, mel))
    prompt = list(prompt) if prompt is not None else tok.sot_sequence(timestamps=opts.timestamps)
    sample_begin = len(prompt)
    rules = LogitRules(w, opts, sample_begin)
    max_len = min(sample_begin + opts.max_tokens, w.model.config.n_text_ctx)
    if opts.beam_size == 1 or opts.temperature > 0:
        tokens, sum_lp, no_speech = _greedy(w, audio, prompt, rules, opts, max_len)
    else:
        tokens, sum_lp, no_speech = _beam(w, audio, prompt, rules, opts, max_len)
    text = tok.decode(tokens)
    n = len(tokens) + 1  # the end of text counts, as in Whisper's average
    return DecodingResult(tokens, text, sum_lp, sum_lp / n, no_speech, opts.temperature, compression_ratio(text))


def _no_speech_prob(w: Whisper, logits: Tensor) -> float:
    return float(torch.softmax(logits.float(), dim=-1)[w.tokenizer.special.no_speech])


def _greedy(w: Whisper, audio: Tensor, prompt: list[int], rules: LogitRules, opts: DecodingOptions,
            max_len: int) -> tuple[list[int], float, float]:
    step = _Stepper(w, audio, opts.use_cache)
    gen = torch.Generator().manual_seed(opts.seed)
    tokens = torch.tensor([prompt])  # (1, L)
    sum_lp, no_speech = 0.0, 0.0
    while tokens.shape[1] < max_len:
        logits = step(tokens)  # (1, V)
        if tokens.shape[1] == len(prompt):
            no_speech = _no_speech_prob(w, logits[0])
        logits = rules(logits.float().clone(), tokens)
        logprobs = torch.log_softmax(logits, dim=-1)
        if opts.temperature > 0:
            nxt = int(torch.multinomial(torch.softmax(logits / opts.temperature, dim=-1), 1, generator=gen))
        else:
            nxt = int(logits.argmax(dim=-1))
        sum_lp += float(logprobs[0, nxt])
        if nxt == rules.eot:
            break
        tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
    return tokens[0, len(prompt):].tolist(), sum_lp, no_speech


def _beam(w: Whisper, audio: Tensor, prompt: list[int], rules: LogitRules, opts: DecodingOptions,
          max_len: int) -> tuple[list[int], float, float]:
    k = opts.beam_size
    step = _Stepper(w, audio.expand(k, -1, -1).contiguous(), opts.use_cache)
    tokens = torch.tensor([prompt] * k)  # (B, L)
    scores = torch.zeros(k)
    finished: dict[tuple[int, ...], float] = {}
    no_speech = 0.0
    eot = rules.eot
    first = True
    while tokens.shape[1] < max_len and len(finished) < k:
        logits = step(tokens)  # (B, V)
        if first:
            no_speech = _no_speech_prob(w, logits[0])
        logprobs = torch.log_softmax(rules(logits.float().clone(), tokens), dim=-1)  # (B, V)
        rows = range(1) if first else range(k)  # the first step: every beam is the same prompt
        first = False
        cands: list[tuple[float, int, int]] = []
        for r in rows:
            top_lp, top_id = logprobs[r].topk(k + 1)
            for lp, t in zip(top_lp.tolist(), top_id.tolist()):
                if lp > -float("inf"):
                    cands.append((float(scores[r]) + lp, r, t))
        cands.sort(key=lambda c: -c[0])
        keep_rows, keep_tok, keep_score = [], [], []
        for score, r, t in cands:
            seq = tuple(tokens[r, len(prompt):].tolist())
            if t == eot:
                if seq not in finished:
                    finished[seq] = score
            else:
                keep_rows.append(r)
                keep_tok.append(t)
                keep_score.append(score)
            if len(keep_rows) == k:
                break
        if not keep_rows:
            break
        while len(keep_rows) < k:  # fewer live candidates than beams: repeat the best
            keep_rows.append(keep_rows[0])
            keep_tok.append(keep_tok[0])
            keep_score.append(keep_score[0])
        index = torch.tensor(keep_rows)
        step.reorder(index)
        tokens = torch.cat([tokens[index], torch.tensor(keep_tok)[:, None]], dim=1)
        scores = torch.tensor(keep_score)
    if len(finished) < k:  # unfinished beams at the length limit compete too
        for r in range(k):
            finished.setdefault(tuple(tokens[r, len(prompt):].tolist()), float(scores[r]))

    def rank(item: tuple[tuple[int, ...], float]) -> float:
        length = len(item[0]) + 1
        penalty = length if opts.length_penalty is None else ((5 + length) / 6) ** opts.length_penalty
        return item[1] / penalty

    best, lp = max(finished.items(), key=rank)
    return list(best), lp, no_speech


def _needs_fallback(r: DecodingResult) -> bool:
    if r.compression_ratio > 2.4:
        return True
    return r.avg_logprob < -1.0 and r.no_speech_prob <= 0.6  # likely silence is not retried


def _split_segments(w: Whisper, tokens: list[int], offset: float, r: DecodingResult) -> list[Segment]:
    """Segments between timestamp pairs of ``tokens`` (times relative to the window + ``offset``)."""
    ts = w.tokenizer.timestamp_begin
    segs, start, run = [], None, []
    for t in tokens:
        if t >= ts:
            time = (t - ts) * TIME_STEP
            if start is None:
                start = time
            elif run:
                segs.append(Segment(offset + start, offset + time, w.tokenizer.decode(run).strip(), run,
                                    r.temperature, r.avg_logprob))
                start, run = None, []
            else:
                start = time
        else:
            run.append(t)
    if run:  # text without a closing timestamp
        segs.append(Segment(offset + (start or 0.0), offset + (start or 0.0), w.tokenizer.decode(run).strip(), run,
                            r.temperature, r.avg_logprob))
    return segs


@torch.no_grad()
def transcribe(w: Whisper, audio: np.ndarray | Tensor, *, beam_size: int = 1, timestamps: bool | None = None,
               temperatures: tuple[float, ...] = TEMPERATURES, length_penalty: float | None = None,
               words: bool = False, heads: Sequence[tuple[int, int]] | None = None,
               condition_on_previous_text: bool = True, initial_prompt: str | None = None) -> Transcript:
    """Transcribe 16 kHz mono ``audio (N,)`` of any length, in 30 s windows.

    Each window is decoded at the first temperature; when its text is repetitive or unlikely it is
    decoded again at the next one (temperature fallback). Windows advance to the last timestamp the
    model predicted (``timestamps``, default: on for audio longer than 30 s), else by 30 s.
    ``words`` adds word timings from the cross-attention of ``heads`` (default: the model's
    alignment heads) to each segment.

    With ``condition_on_previous_text`` each window's decoder input starts with
    ``<|startofprev|>`` and the tokens transcribed so far (the last ``n_text_ctx // 2 - 1``, 223),
    as Whisper does; after a window decoded at a temperature above 0.5 the earlier text is dropped
    from the prompt. ``initial_prompt`` is text placed before the first window's transcript (kept
    in the prompt while conditioning lasts; for the first window only when conditioning is off).
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.dim() != 1 or x.numel() == 0:
        raise ShapeError(f"audio must be (N,) 16 kHz samples with N > 0; got shape {tuple(x.shape)}")
    if not temperatures:
        raise AttnKitError("temperatures must name at least one temperature")
    duration = x.numel() / SAMPLE_RATE
    if timestamps is None:
        timestamps = duration > 30.0
    n_frames = x.numel() // HOP_LENGTH
    mel = log_mel_spectrogram(x, w.model.config.n_mels, pad_to=x.numel() + N_FRAMES * HOP_LENGTH)  # (M, F + 3000)
    seek, segments = 0, []
    tok = w.tokenizer
    max_prev = w.model.config.n_text_ctx // 2 - 1
    history = tok.encode(" " + initial_prompt.strip()) if initial_prompt and initial_prompt.strip() else []
    reset_since = 0  # history[reset_since:] is the prompt of the next window
    while seek < n_frames:
        window = mel[:, seek: seek + N_FRAMES][None]  # (1, M, 3000)
        size = min(N_FRAMES, n_frames - seek)
        offset = seek * FRAME_SECONDS
        window_samples = min(N_FRAMES * HOP_LENGTH, x.numel() - seek * HOP_LENGTH)
        enc = w.model.embed_audio(window)
        result = None
        prompt = tok.prompt_sequence(history[reset_since:], max_prev, timestamps)
        for t in temperatures:
            opts = DecodingOptions(beam_size=beam_size if t == 0 else 1, temperature=t, timestamps=timestamps,
                                   length_penalty=length_penalty)
            result = decode(w, window, opts, audio=enc, prompt=prompt)
            if not _needs_fallback(result):
                break
        assert result is not None
        if result.no_speech_prob > 0.6 and result.avg_logprob < -1.0:
            seek += size  # silence
            continue
        toks = result.tokens
        ts = w.tokenizer.timestamp_begin
        consumed = toks
        if timestamps:
            segs = _split_segments(w, toks, offset, result)
            ends_single = len(toks) >= 2 and toks[-1] >= ts and toks[-2] < ts
            consecutive = [i for i in range(1, len(toks)) if toks[i] >= ts and toks[i - 1] >= ts]
            if consecutive and not ends_single and size == N_FRAMES:
                last = toks[consecutive[-1] - 1] - ts  # the end of the last complete segment
                seek += max(1, last * INPUT_STRIDE)
                segs = [s for s in segs if s.end <= offset + last * TIME_STEP + 1e-6]
                consumed = toks[: consecutive[-1]]  # through the last complete segment's end timestamp
            else:
                seek += size
            for s in segs:
                s.end = min(s.end, duration) if s.end > s.start else min(offset + size * FRAME_SECONDS, duration)
        else:
            segs = [Segment(offset, min(offset + size * FRAME_SECONDS, duration), result.text.strip(), toks,
                            result.temperature, result.avg_logprob)]
            seek += size
        segs = [s for s in segs if s.text]
        history.extend(consumed)
        if not condition_on_previous_text or result.temperature > 0.5:
            reset_since = len(history)  # a window decoded at a high temperature does not prompt the next
        if words and segs:
            _add_words(w, enc, segs, offset, window_samples, heads)
        segments.extend(segs)
    text = " ".join(s.text for s in segments).strip()
    return Transcript(text, segments, duration)


def _add_words(w: Whisper, enc: Tensor, segs: list[Segment], offset: float, n_samples: int,
               heads: Sequence[tuple[int, int]] | None) -> None:
    """Align the window's text once and hand each word to the segment its start falls in."""
    from .timing import align_words

    tokens = [t for s in segs for t in s.tokens if t < w.tokenizer.eot]
    found = align_words(w, enc, tokens, n_samples, heads=heads).words
    for wt in found:
        wt.start, wt.end = wt.start + offset, wt.end + offset
        target = segs[-1]
        for s in segs:
            if wt.start < s.end or s is segs[-1]:
                target = s
                break
        target.words.append(wt)
