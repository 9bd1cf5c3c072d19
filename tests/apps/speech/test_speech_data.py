"""The speech clips: real pocketsphinx-testdata recordings with transcripts, synthetic speech,
and constructed clips with known word times."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from attnkit import AttnKitError
from attnkit.apps.speech import data


def test_real_clips_have_transcripts(need_data):
    need_data(data.data_status()["pocketsphinx"] == "installed", "Debian pocketsphinx-testdata",
              "apt-get install pocketsphinx-testdata")
    clips = data.real_clips()
    groups = [c.group for c in clips]
    assert groups.count("librivox") == 5 and groups.count("cards") == 5
    assert "goforward" in groups and "tidigits" in groups
    by_name = {c.name: c for c in clips}
    assert by_name["goforward"].reference == "go forward ten meters"
    assert by_name["cards/004"].reference == "five five"
    assert by_name["tidigits/dhd.2934z"].reference == "two nine three four zero"
    x = by_name["cards/001"].audio()
    assert x.dtype == np.float32 and 0.5 < len(x) / 16000 < 2


def test_status_and_require_data():
    status = data.data_status()
    assert set(status) == {"pocketsphinx", "espeak-ng", "flite", "whisper"}
    assert all(v == "installed" or v.startswith("missing: ") for v in status.values())
    with pytest.raises(AttnKitError, match="expected one of"):
        data.require_data("nonsense")


def test_synthesis_and_timed_clips(need_data):
    need_data(shutil.which("espeak-ng") is not None and shutil.which("flite") is not None, "espeak-ng and flite",
              "apt-get install espeak-ng flite")
    for engine, voice in (("espeak-ng", "en-us"), ("flite", "slt")):
        x = data.synthesize("hello world", engine, voice)
        assert x.dtype == np.float32 and 0.3 < len(x) / 16000 < 3 and np.abs(x).max() > 0.05
    clip = data.timed_clips(voices=(("flite", "slt"),), word_lists=(("one", "two", "three"),))[0]
    words = clip.words
    assert [w for w, _, _ in words] == ["one", "two", "three"]
    assert words[0][1] == pytest.approx(0.3)
    assert all(s < e for _, s, e in words) and all(a[2] < b[1] for a, b in zip(words, words[1:]))
    assert words[-1][2] < len(clip.audio) / 16000
    inside = clip.audio[int(words[1][1] * 16000): int(words[1][2] * 16000)]
    gap = clip.audio[int(words[0][2] * 16000) + 1: int(words[1][1] * 16000) - 1]
    assert np.abs(inside).max() > 0.05 and (gap.size == 0 or np.abs(gap).max() == 0)


def test_trim_silence():
    x = np.concatenate([np.zeros(1600), 0.5 * np.ones(800), np.zeros(3200)]).astype(np.float32)
    y = data.trim_silence(x)
    assert len(y) == 800 and y.min() == 0.5
