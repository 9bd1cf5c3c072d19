"""The sentiment task end to end: folds, training with the shared trainer on batches of the
cached MiniLM states (:mod:`.batches`), or scikit-learn's logistic regression (:mod:`.probes`), or
the lexical models (:mod:`.lexical`); evaluation on the held-out fold with the majority-class
baseline, highlights, and classifying new text from a run.

One run trains on eight folds, stops early on the next fold after the test fold (validation) and
reports accuracy on the test fold (default: fold 10; see :func:`~attnkit.apps.sentiment.data.fold_split`).
The logistic regressions train on the nine non-test folds; the lexical models (:mod:`.lexical`)
choose their settings on the validation fold, then refit on all nine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError
from ..trainer import RunFolder, TrainConfig, Trainer, TrainResult, read_json, save_weights, write_json
from .batches import cross_entropy_loss, positive_probs, train_batches
from .data import DATASETS, FOLDS, fold_split, load
from .encoders import DEFAULT_ENCODER, check_encoder
from .features import MAX_TOKENS, features
from .loaded import TASK, LoadedRun, _minilm, load_run
from .models import (
    FUSION_MODELS,
    LEXICAL_MODELS,
    MODEL_DATA,
    MODELS,
    SKLEARN_MODELS,
    ModelConfig,
    build_model,
    fine_tuned,
    has_attention,
    input_kind,
)
from .probes import fit_lr, pooled

__all__ = ["Preset", "PRESETS", "THRESHOLDS", "train", "test_probabilities", "evaluate_run", "summary"]

THRESHOLDS = {"sentences": (0.65, 0.70, 0.75, 0.80), "reviews": (0.75, 0.80, 0.85, 0.88)}  # validation accuracy


@dataclass(frozen=True)
class Preset:
    batch_size: int
    train: TrainConfig
    model: dict[str, Any]


def _cfg(steps: int, budget: float, lr: float, every: int, warm: int = 20, patience: int | None = 6,
         schedule: str = "constant") -> TrainConfig:
    return TrainConfig(max_steps=steps, budget_seconds=budget, lr=lr, warmup_steps=warm, eval_every=every,
                       patience=patience, weight_decay=0.01, log_every=10, schedule=schedule)


# (model, quick) -> preset; budgets are wall-clock seconds of training steps on one thread
PRESETS: dict[tuple[str, bool], Preset] = {
    ("minilm-mean", False): Preset(64, _cfg(800, 60, 3e-3, 50), {}),
    ("minilm-mean", True): Preset(64, _cfg(100, 8, 3e-3, 25, patience=None), {}),
    ("minilm-attn", False): Preset(64, _cfg(800, 60, 3e-3, 50), {}),
    ("minilm-attn", True): Preset(64, _cfg(100, 8, 3e-3, 25, patience=None), {}),
    # all six layers, 2.5 epochs, linear decay, the best validation checkpoint kept (see docs/apps/sentiment.md)
    ("minilm-ft", False): Preset(32, _cfg(250, 330, 5e-5, 50, warm=25, patience=None, schedule="linear"),
                                 {"tune_layers": 6}),
    ("minilm-ft", True): Preset(16, _cfg(40, 20, 5e-4, 20, warm=5, patience=None), {}),
    ("gru", False): Preset(64, _cfg(1200, 90, 2e-3, 50), {}),
    ("gru", True): Preset(32, _cfg(150, 20, 5e-3, 50, warm=10, patience=None), dict(emb_dim=64, hidden=64)),
    ("gru-attn", False): Preset(64, _cfg(1200, 90, 2e-3, 50), {}),
    ("gru-attn", True): Preset(32, _cfg(150, 20, 5e-3, 50, warm=10, patience=None), dict(emb_dim=64, hidden=64)),
    ("han", False): Preset(16, _cfg(900, 120, 1e-3, 50), {}),
    ("han", True): Preset(16, _cfg(60, 10, 2e-3, 20, patience=None), {}),
    ("han-lex", False): Preset(16, _cfg(900, 120, 1e-3, 50), {}),  # han's preset
    ("han-lex", True): Preset(16, _cfg(60, 10, 2e-3, 20, patience=None), {}),
}
PRESETS[("minilm-ft-lex", False)] = PRESETS[("minilm-ft", False)]  # the fused models train as their base
PRESETS[("minilm-ft-lex", True)] = PRESETS[("minilm-ft", True)]
FUSION_LEXICAL = "nbsvm"  # the lexical model whose score han-lex and minilm-ft-lex read


def _check_model(data: str, model: str) -> None:
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    if model not in MODELS:
        raise AttnKitError(f"--model {model!r} is not known; expected one of {', '.join(MODELS)}")
    if model not in MODEL_DATA[data]:
        raise AttnKitError(f"--model {model!r} does not run on --data {data}; expected one of "
                           f"{', '.join(MODEL_DATA[data])}")


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def train(*, data: str = "sentences", model: str = "minilm-attn", quick: bool = False,
          budget_minutes: float | None = None, max_steps: int | None = None, eval_every: int | None = None,
          out: str | Path | None = None, seed: int = 0, progress: bool = True, resume: bool = False,
          fold: int = FOLDS, target: float | None = None, pictures: bool = True, tune_layers: int | None = None,
          encoder: str = DEFAULT_ENCODER, log: Callable[[str], None] = print) -> tuple[RunFolder, dict[str, Any]]:
    """Train one model on the non-test folds and evaluate it on fold ``fold``; returns the run folder
    and its results. ``tune_layers`` (``minilm-ft`` only, 1..6; default: the preset's) is how many
    top MiniLM layers are fine-tuned. ``encoder`` (reviews only; see :mod:`.encoders`) is whose
    token states the MiniLM-state models read."""
    _check_model(data, model)
    check_encoder(encoder, data)
    if encoder != DEFAULT_ENCODER and model in LEXICAL_MODELS:
        raise AttnKitError(f"--encoder applies to the models on MiniLM states; --model {model} reads the raw text")
    options: dict[str, Any] = {}
    if tune_layers is not None:
        if not fine_tuned(model):
            raise AttnKitError(f"--tune-layers applies to --model minilm-ft and minilm-ft-lex only; got --model "
                               f"{model}")
        options["tune_layers"] = tune_layers
    if model in LEXICAL_MODELS:
        return _train_lexical(data, model, fold, out, seed, quick, log, pictures)
    if model in SKLEARN_MODELS:
        mcfg = None
    else:
        mcfg = ModelConfig(kind=model, **{**PRESETS[(model, quick)].model, **options})
    RunFolder.refuse_existing(out, resume)
    t0 = time.perf_counter()
    examples = load(data)
    feats = features(data, log=log, layer=mcfg.mid_layer if fine_tuned(model) else None, encoder=encoder)
    train_idx, valid_idx, test_idx = fold_split(examples, fold)
    labels = [e.label for e in examples]
    run = RunFolder.create(TASK, model, out)
    base = {"task": TASK, "data": data, "encoder": encoder, "fold": fold, "preset": "quick" if quick else "full",
            "seed": seed,
            "sizes": {"train": len(train_idx), "valid": len(valid_idx), "test": len(test_idx)}}
    if model in SKLEARN_MODELS:
        fit_idx = train_idx + valid_idx
        t1 = time.perf_counter()
        weights = fit_lr(pooled(feats, fit_idx, model), [labels[i] for i in fit_idx])
        seconds = time.perf_counter() - t1
        save_weights(run / "model.safetensors", weights)
        write_json(run / "config.json", {**base, "model": {"kind": model}, "parameters": 385,
                                         "train": {"fit_seconds": round(seconds, 2)}})
        results = evaluate_run(run, log=log, pictures=pictures, train_result=TrainResult(1, seconds, "fit", None, None),
                               setup_seconds=time.perf_counter() - t0 - seconds)
        return run, results
    lex = None
    if model in FUSION_MODELS:
        lex = _fusion_scores(run, examples, train_idx, valid_idx, log, model)
    preset = PRESETS[(model, quick)]
    cfg = preset.train.overridden(seed=seed, progress=progress, metric="accuracy",
                                  budget_minutes=budget_minutes, max_steps=max_steps, target=target,
                                  eval_every=eval_every)
    torch.manual_seed(seed)
    assert mcfg is not None
    bert = _minilm(MAX_TOKENS[data])[0].bert if fine_tuned(model) else None
    net = build_model(mcfg, bert)
    if lex is not None:
        f = read_json(run / "lexical" / "fusion.json")
        net.start_from_score(f["slope"], f["intercept"])  # type: ignore[operator]
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    fusion = {"fusion": read_json(run / "lexical" / "fusion.json")} if lex is not None else {}
    write_json(run / "config.json", {**base, "model": mcfg.to_dict(), "train": asdict(cfg),
                                     "batch_size": preset.batch_size, "parameters": trainable, **fusion})
    kind = input_kind(model)

    def evaluate(m: nn.Module) -> dict[str, float]:
        p = positive_probs(m, feats, valid_idx, kind, lex=lex)
        return {"accuracy": float(((p > 0.5).long() == torch.tensor([labels[i] for i in valid_idx])).float().mean())}

    trainer = Trainer(net, cfg, run, batches=train_batches(feats, labels, train_idx, kind, preset.batch_size, lex),
                      loss_fn=cross_entropy_loss,
                      evaluate=evaluate)
    result = trainer.fit_run(f"{model} on {data} (test fold {fold}): {len(train_idx)} train / {len(valid_idx)} "
                             f"valid / {len(test_idx)} test, {trainable:,} trainable parameters",
                             resume=resume, log=log)
    return run, evaluate_run(run, log=log, pictures=pictures, train_result=result,
                             setup_seconds=time.perf_counter() - t0 - result.seconds)


def _fusion_scores(run: RunFolder, examples: Sequence[Any], train_idx: list[int], valid_idx: list[int],
                   log: Callable[[str], None], model: str = "han-lex") -> Tensor:
    """The lexical scores ``han-lex`` and ``minilm-ft-lex`` read ``(N_text,)`` (NaN outside training
    and validation), divided by the spread of the training scores. A training text's score comes
    from the lexical model fit on the other training folds (cross-fitting, so the network learns
    how far to trust scores of unseen texts); the validation (and later test) texts are scored by the
    model fit on all training folds, saved in ``run/lexical`` with ``fusion.json``: the scale, and
    the logistic calibration (slope, intercept) of the cross-fitted training scores, where the
    classifier starts (:meth:`~attnkit.apps.sentiment.models.HAN.start_from_score`). No test text
    reaches either fit."""
    from .data import folds
    from .lexical import cross_fit_scores, fit_lexical

    t0 = time.perf_counter()
    fold_of = folds(list(examples))
    texts = [examples[i].text for i in train_idx]
    y = [examples[i].label for i in train_idx]
    inner = cross_fit_scores(FUSION_LEXICAL, texts, y, [fold_of[i] for i in train_idx])
    scale = float(inner.std())
    if not math.isfinite(scale) or scale <= 0:
        raise AttnKitError(f"the cross-fitted {FUSION_LEXICAL} scores have spread {scale}; expected a positive number")
    from sklearn.linear_model import LogisticRegression

    calib = LogisticRegression(C=1e4, max_iter=1000).fit((inner / scale).numpy()[:, None], y)
    lexical = fit_lexical(FUSION_LEXICAL, texts, y)
    lexical.save(run / "lexical")
    write_json(run / "lexical" / "fusion.json", {"lexical": FUSION_LEXICAL, "scale": scale,
                                                 "slope": float(calib.coef_[0, 0]),
                                                 "intercept": float(calib.intercept_[0])})
    lex = torch.full((len(examples),), math.nan)
    lex[train_idx] = inner / scale
    lex[valid_idx] = lexical.scores([examples[i].text for i in valid_idx]) / scale
    log(f"{FUSION_LEXICAL} scores for {model}: cross-fitted over {len(set(fold_of[i] for i in train_idx))} training "
        f"folds in {time.perf_counter() - t0:.0f} s (scale {scale:.3f})")
    return lex


def _train_lexical(data: str, model: str, fold: int, out: str | Path | None, seed: int, quick: bool,
                   log: Callable[[str], None], pictures: bool) -> tuple[RunFolder, dict[str, Any]]:
    from .lexical import fit_lexical

    t0 = time.perf_counter()
    examples = load(data)
    train_idx, valid_idx, test_idx = fold_split(examples, fold)
    run = RunFolder.create(TASK, model, out)
    t1 = time.perf_counter()
    lex = fit_lexical(model, [examples[i].text for i in train_idx], [examples[i].label for i in train_idx],
                      [examples[i].text for i in valid_idx], [examples[i].label for i in valid_idx])
    seconds = time.perf_counter() - t1
    lex.save(run.path)
    write_json(run / "config.json", {"task": TASK, "data": data, "fold": fold, "preset": "quick" if quick else "full",
                                     "seed": seed, "sizes": {"train": len(train_idx), "valid": len(valid_idx),
                                                             "test": len(test_idx)},
                                     "model": {"kind": model, **lex.info}, "parameters": len(lex.weights) + 1,
                                     "train": {"fit_seconds": round(seconds, 2)}})
    log(f"{model} on {data} (test fold {fold}): {len(lex.weights):,} n-grams, fit in {seconds:.1f} s"
        + (f", C={lex.info['C']:g}" if "C" in lex.info else ""))
    results = evaluate_run(run, log=log, pictures=pictures, train_result=TrainResult(1, seconds, "fit", None, None),
                           setup_seconds=time.perf_counter() - t0 - seconds)
    return run, results


def _accuracy(p: Tensor, y: Sequence[int]) -> float:
    return float(((p > 0.5).long() == torch.tensor(list(y))).float().mean()) if len(y) else math.nan


def test_probabilities(lr: LoadedRun, examples: Sequence[Any], test_idx: Sequence[int], *,
                       log: Callable[[str], None] = print) -> Tensor:
    """``(N_test,)`` P(positive) that the run ``lr`` gives the texts ``examples[test_idx]``, read
    from the cached encoder states as in training (any model kind)."""
    kind, data = lr.kind, lr.data
    if kind in LEXICAL_MODELS:
        return torch.sigmoid(lr.model.scores([examples[i].text for i in test_idx]))
    if kind in SKLEARN_MODELS:
        feats = features(data, log=log, encoder=lr.encoder)
        return torch.sigmoid(pooled(feats, list(test_idx), kind) @ lr.model.coef + lr.model.intercept)
    feats = features(data, log=log, layer=lr.model.config.mid_layer if fine_tuned(kind) else None,
                     encoder=lr.encoder)
    lex = None
    if lr.lexical is not None:
        lex = torch.full((len(examples),), math.nan)
        lex[list(test_idx)] = lr.lex_scores([examples[i].text for i in test_idx])
    return positive_probs(lr.model, feats, list(test_idx), input_kind(kind), lex=lex)


def evaluate_run(path: str | Path | RunFolder, *, log: Callable[[str], None] = print, pictures: bool = True,
                 train_result: TrainResult | None = None, setup_seconds: float | None = None) -> dict[str, Any]:
    """Accuracy on the run's test fold, with the majority-class baseline; writes ``results.json``
    (and highlight pictures of held-out texts) and returns it."""
    lr = load_run(path.path if isinstance(path, RunFolder) else path)
    run, config, kind, data = lr.run, lr.config, lr.kind, lr.data
    examples = load(data)
    train_idx, valid_idx, test_idx = fold_split(examples, config["fold"])
    labels = [e.label for e in examples]
    y_test = [labels[i] for i in test_idx]
    p = test_probabilities(lr, examples, test_idx, log=log)
    majority = max(set(labels[i] for i in train_idx), key=[labels[i] for i in train_idx].count)
    state = read_json(run / "trainer_state.json") if (run / "trainer_state.json").exists() else {}
    before = read_json(run / "results.json").get("train", {}) if (run / "results.json").exists() else {}
    evals = state.get("evals", [])
    reached = {}
    for th in THRESHOLDS[data]:
        first = next((e for e in evals if e.get("accuracy", -1) >= th), None)
        reached[str(th)] = None if first is None else {"step": first["step"], "seconds": first["seconds"]}
    results: dict[str, Any] = {
        "task": TASK, "data": data, "model": kind,
        **({"encoder": lr.encoder} if kind not in LEXICAL_MODELS else {}), "attention": has_attention(kind),
        "fold": config["fold"],
        "preset": config["preset"], "parameters": config["parameters"],
        "test": {"n": len(test_idx), "accuracy": _accuracy(p, y_test)},
        "baselines": {"majority-class": {"accuracy": sum(y == majority for y in y_test) / len(y_test)}},
        "train": {"steps": state.get("step", 1 if kind in SKLEARN_MODELS + LEXICAL_MODELS else None),
                  "seconds": state.get("seconds", config.get("train", {}).get("fit_seconds")),
                  "best_valid_accuracy": state.get("best"), "best_step": state.get("best_step"),
                  "stopped": before.get("stopped") if train_result is None else train_result.stopped,
                  "setup_seconds": before.get("setup_seconds") if setup_seconds is None else round(setup_seconds, 2)},
        "time_to_valid_accuracy": reached,
    }
    if pictures and has_attention(kind):
        from .highlight import highlight_run

        results["pictures"] = highlight_run(lr, [examples[i].text for i in test_idx[:3]])
    write_json(run / "results.json", results)
    log(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    t, tr = results["test"], results["train"]
    secs = f", {tr['steps']} steps, {tr['seconds']:.0f} s" if tr.get("seconds") is not None else ""
    majority = results["baselines"]["majority-class"]["accuracy"]
    return (f"{results['model']} on {results['data']} (test fold {results['fold']}, n={t['n']}): accuracy "
            f"{100 * t['accuracy']:.1f}%  (majority class {100 * majority:.1f}%{secs})")
