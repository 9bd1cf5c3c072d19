"""Reading audio for Whisper: WAV, FLAC (and the other formats of libsndfile) with ``soundfile``
at any sample rate, mixed down to mono and resampled to 16 kHz with
``scipy.signal.resample_poly``; headerless ``.raw`` files are read as 16 kHz signed 16-bit
little-endian mono (the format of pocketsphinx's test recordings)."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from ...errors import AttnKitError
from .features import SAMPLE_RATE

__all__ = ["AudioError", "AUDIO_SUFFIXES", "load_audio", "resample"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".raw")


class AudioError(AttnKitError):
    """An audio file that is missing, unreadable, empty or of an unsupported kind."""


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """``x (N,)`` sampled at ``rate`` Hz, resampled to ``target`` Hz (polyphase filter)."""
    if rate == target:
        return x.astype(np.float32, copy=False)
    if rate <= 0:
        raise AudioError(f"sample rate must be positive; got {rate}")
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, int(rate) // g).astype(np.float32)


def load_audio(path: str | Path) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at 16 kHz, shape ``(N,)``; :class:`AudioError` when the file
    is missing, not audio, empty or has an unsupported suffix (one of :data:`AUDIO_SUFFIXES`)."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file {str(p)!r} does not exist")
    if not p.is_file():
        raise AudioError(f"audio file {str(p)!r} is not a file")
    suffix = p.suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise AudioError(f"audio file {str(p)!r} has suffix {suffix or '(none)'!r}; expected one of "
                         f"{', '.join(AUDIO_SUFFIXES)}")
    if suffix == ".raw":
        data = p.read_bytes()
        if len(data) % 2:
            raise AudioError(f"raw audio {str(p)!r} has an odd byte count ({len(data)}); expected 16-bit samples")
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        rate = SAMPLE_RATE
    else:
        import soundfile as sf

        try:
            x, rate = sf.read(str(p), dtype="float32", always_2d=True)  # (N, channels)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise AudioError(f"cannot read audio file {str(p)!r}: {exc}") from None
        x = x.mean(axis=1)  # mono mixdown
    if x.size == 0:
        raise AudioError(f"audio file {str(p)!r} holds no samples")
    if not np.isfinite(x).all():
        raise AudioError(f"audio file {str(p)!r} holds NaN or infinite samples")
    return resample(x, int(rate))
