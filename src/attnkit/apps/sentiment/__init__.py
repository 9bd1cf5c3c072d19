"""Sentiment with attention: the Pang & Lee movie-review polarity sentences and full reviews,
classified by frozen MiniLM with mean or attention pooling, MiniLM with its top layers fine-tuned,
bidirectional GRUs from scratch without and with attention, a hierarchical attention network
for reviews (also on MiniLM adapted on the sentence set, and fused with a lexical score), and the
lexical references TF-IDF + logistic regression and NB-SVM; ten fixed folds, attention highlights
and a faithfulness test of the attention."""

from .data import DATASETS, FOLDS, DataMissing, Example, fold_split, folds, load
from .loaded import LoadedRun, Prediction, load_run
from .models import MODEL_DATA, MODELS, AttentionPool, ModelConfig, build_model
from .task import PRESETS, evaluate_run, train

__all__ = ["DATASETS", "FOLDS", "DataMissing", "Example", "fold_split", "folds", "load", "MODEL_DATA", "MODELS",
           "AttentionPool", "ModelConfig", "build_model", "PRESETS", "LoadedRun", "Prediction", "evaluate_run",
           "load_run", "train"]
