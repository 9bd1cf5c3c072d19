"""OpenAI's Whisper speech recogniser on :mod:`attnkit.nn`: a CTranslate2 weight reader, the
encoder-decoder, log-mel features, audio input, the tokenizer, greedy and beam decoding with
temperature fallback and long audio, and word timings from cross-attention by DTW."""

from .audio import AUDIO_SUFFIXES, AudioError, load_audio, resample
from .ct2 import CT2File, CT2FormatError, parse_ct2, read_ct2
from .decoding import DecodingOptions, DecodingResult, Segment, Transcript, compression_ratio, decode, transcribe
from .features import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, mel_filters, pad_or_trim
from .files import OPENAI_ALIGNMENT_HEADS, WHISPER_SHA256, Whisper, load_whisper, whisper_dir
from .model import DecoderState, WhisperConfig, WhisperModel, from_ct2
from .timing import (
    AlignmentResult,
    WordTiming,
    align_words,
    alignment_matrix,
    cross_attention_weights,
    dtw,
    find_alignment_heads,
    median_filter,
    refine_with_energy,
    timing_errors,
    trim_to_attention,
    word_timings,
)
from .tokenizer import WhisperTokenizer

__all__ = ["AUDIO_SUFFIXES", "AudioError", "load_audio", "resample", "CT2File", "CT2FormatError", "parse_ct2",
           "read_ct2", "DecodingOptions", "DecodingResult", "Segment", "Transcript", "compression_ratio", "decode",
           "transcribe", "N_FRAMES", "N_SAMPLES", "SAMPLE_RATE", "log_mel_spectrogram", "mel_filters", "pad_or_trim",
           "OPENAI_ALIGNMENT_HEADS", "WHISPER_SHA256", "Whisper", "load_whisper", "whisper_dir", "DecoderState",
           "WhisperConfig", "WhisperModel", "from_ct2", "AlignmentResult", "WordTiming", "align_words",
           "alignment_matrix", "cross_attention_weights", "dtw", "find_alignment_heads", "median_filter",
           "refine_with_energy", "timing_errors", "trim_to_attention", "word_timings", "WhisperTokenizer"]
