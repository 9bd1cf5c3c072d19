"""Summarization of real text (standard library docstrings, man pages, Debian package descriptions)
with a pointer-generator transformer, the same transformer without copying, and a GRU without attention."""

from .data import DATASETS, SOURCES, DataMissing, SummaryPair, data_status, load_pairs, require_data
from .models import MODELS, SummConfig, WordVocab, build_model
from .task import TASK, LoadedRun, evaluate_run, load_run, summarize, train

__all__ = ["DATASETS", "SOURCES", "DataMissing", "SummaryPair", "data_status", "load_pairs", "require_data",
           "MODELS", "SummConfig", "WordVocab", "build_model", "TASK", "LoadedRun", "evaluate_run", "load_run",
           "summarize", "train"]
