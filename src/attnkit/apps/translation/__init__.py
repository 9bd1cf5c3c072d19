"""Translation with attention: number words (English -> French / German) with GRU encoder-decoders
without and with attention (Bahdanau, Luong) and a transformer, all on :mod:`attnkit.nn`; training
on the shared trainer, BLEU/chrF/exact match on held-out data, alignment pictures and errors."""

from .data import DATASETS, NUMBER_LANGS, DataMissing, Pair, number_pairs
from .decoding import beam_search, greedy
from .models import MODELS, ModelConfig, Translator, build_model
from .task import PRESETS, LoadedRun, evaluate_run, load_run, train, translate
from .tokenizer import SubwordTokenizer

__all__ = ["DATASETS", "NUMBER_LANGS", "DataMissing", "Pair", "number_pairs", "beam_search", "greedy", "MODELS",
           "ModelConfig", "Translator", "build_model", "PRESETS", "LoadedRun", "evaluate_run", "load_run", "train",
           "translate", "SubwordTokenizer"]
