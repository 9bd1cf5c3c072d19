"""Speech recognition with Whisper tiny.en on attnkit: the real and synthetic clips, an English
text normaliser, the evaluation (WER, word-timing error, approximate encoder attention) and the
demo."""

from .data import DataMissing, data_status, real_clips, require_data, synthetic_clips, timed_clips
from .normalizer import normalize_english

__all__ = ["DataMissing", "data_status", "real_clips", "require_data", "synthetic_clips", "timed_clips",
           "normalize_english"]
