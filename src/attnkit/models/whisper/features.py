"""Whisper's input features: an 80-bin log-mel spectrogram of 16 kHz audio, 25 ms Hann windows
(400 samples, periodic) every 10 ms (160 samples), computed with :func:`torch.stft` and a Slaney
mel filter bank built here (0 to 8 kHz, area-normalised, as librosa's default), then
``log10(max(mel, 1e-10))``, floored at 8 below the maximum, and mapped by ``(x + 4) / 4``.
30 s of audio gives 3,000 frames."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...errors import AttnKitError, ShapeError

__all__ = ["SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "CHUNK_SECONDS", "N_SAMPLES", "N_FRAMES", "mel_filters",
           "log_mel_spectrogram", "pad_or_trim"]

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000 samples in a window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3,000 mel frames in a window


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, math.log(6.4) / 27.0
    lin = f / (200.0 / 3)
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * (200.0 / 3))


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Triangular Slaney-normalised mel filters ``(n_mels, n_fft // 2 + 1)`` from 0 Hz to Nyquist."""
    if n_mels < 1 or n_fft < 2:
        raise AttnKitError(f"mel_filters needs n_mels >= 1 and n_fft >= 2; got n_mels={n_mels}, n_fft={n_fft}")
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)  # (n_mels + 2,)
    widths = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))  # (n_mels, n_freqs)
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]  # equal area per filter
    return torch.from_numpy(weights.astype(np.float32))


_FILTERS: dict[int, Tensor] = {}


def pad_or_trim(audio: Tensor, length: int = N_SAMPLES) -> Tensor:
    """``audio (..., N)`` zero-padded or cut to ``(..., length)``."""
    n = audio.shape[-1]
    if n > length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - n)) if n < length else audio


def log_mel_spectrogram(audio: Tensor | np.ndarray, n_mels: int = 80, *, pad_to: int | None = N_SAMPLES) -> Tensor:
    """Log-mel features ``(n_mels, frames)`` (or ``(B, n_mels, frames)``) of 16 kHz mono audio ``(N,)`` or ``(B, N)``.

    ``pad_to`` pads (or cuts) the audio to that many samples first (default 30 s, giving 3,000
    frames, Whisper's input); None keeps its length (``N // 160`` frames).
    """
    x = torch.as_tensor(audio)
    if x.dim() not in (1, 2) or x.shape[-1] == 0:
        raise ShapeError(f"audio must be (N,) or (B, N) samples with N > 0; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise AttnKitError(f"audio must be floating point samples in [-1, 1]; got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise AttnKitError("audio contains NaN or infinite samples")
    x = x.float()
    if pad_to is not None:
        x = pad_or_trim(x, pad_to)
    window = torch.hann_window(N_FFT, device=x.device)
    spec = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (..., n_freqs, frames); the last frame is dropped, as Whisper does
    if n_mels not in _FILTERS:
        _FILTERS[n_mels] = mel_filters(n_mels)
    mel = _FILTERS[n_mels].to(x.device) @ power  # (..., n_mels, frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    top = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, top - 8.0)
    return (log_spec + 4.0) / 4.0
