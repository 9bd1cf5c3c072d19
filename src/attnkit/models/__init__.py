"""Real pretrained architectures built on :mod:`attnkit.nn`: all-MiniLM-L6-v2 (:mod:`attnkit.models.bert`)."""

from ._files import minilm_dir
from .bert import AttentionSettings, BertConfig, BertModel, BertOutput, BertTokenizer, SentenceEncoder, load_minilm

__all__ = ["AttentionSettings", "BertConfig", "BertModel", "BertOutput", "BertTokenizer", "SentenceEncoder",
           "load_minilm", "minilm_dir"]
