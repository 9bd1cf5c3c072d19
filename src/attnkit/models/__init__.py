"""Real pretrained architectures built on :mod:`attnkit.nn`: all-MiniLM-L6-v2 (:mod:`attnkit.models.bert`)
and OpenAI's Whisper tiny.en (:mod:`attnkit.models.whisper`)."""

from ._files import minilm_dir
from .bert import AttentionSettings, BertConfig, BertModel, BertOutput, BertTokenizer, SentenceEncoder, load_minilm
from .whisper import Whisper, WhisperConfig, WhisperModel, WhisperTokenizer, load_whisper, whisper_dir

__all__ = ["AttentionSettings", "BertConfig", "BertModel", "BertOutput", "BertTokenizer", "SentenceEncoder",
           "load_minilm", "minilm_dir", "Whisper", "WhisperConfig", "WhisperModel", "WhisperTokenizer", "load_whisper",
           "whisper_dir"]
