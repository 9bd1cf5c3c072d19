"""Real pretrained transformers running on attnkit: all-MiniLM-L6-v2 (:mod:`attnkit.models.bert`),
the Hugging Face attention-function integration (:mod:`attnkit.models.hf`) and the cost of
approximate attention on the real model (:mod:`attnkit.models.approx`)."""

from .bert import AttentionSettings, BertConfig, BertModel, BertOutput, BertTokenizer, SentenceEncoder, load_minilm

__all__ = ["AttentionSettings", "BertConfig", "BertModel", "BertOutput", "BertTokenizer", "SentenceEncoder",
           "load_minilm"]
