"""Ten-fold cross-validation of the sentiment models on the same fixed folds, written as JSON.

``python -m attnkit.apps.sentiment.crossval --data sentences --models minilm-lr minilm-attn
--out runs/sentiment-cv-sentences.json`` trains every model on every fold (each fold a run folder
under ``--runs``), and writes after each fold: per model the test accuracy of each fold, the mean,
the 95% t-interval over the folds, and the steps and seconds to each validation-accuracy
threshold. ``--folds 1 2 3`` runs some folds only (the table says how many ran). An existing
output file is extended: folds already in it are not run again. ``--tune-layers N`` sets how many
top MiniLM layers ``minilm-ft`` (and ``minilm-ft-lex``) fine-tunes (default: its preset's); the table records it, and a
model's folds are never mixed across settings. ``--encoder minilm-sentft`` (reviews) runs the
models on MiniLM states with the encoder adapted on the sentence set (see :mod:`.encoders`); their
rows are keyed ``<model>@<encoder>``, next to the rows of the published MiniLM in the same table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import AttnKitError
from ..trainer import read_json, write_json
from .data import DATASETS, FOLDS
from .encoders import DEFAULT_ENCODER, ENCODERS, check_encoder
from .models import LEXICAL_MODELS, MODEL_DATA

__all__ = ["t_interval", "summarize", "crossval", "markdown", "paired"]


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of ``values`` (low = high = mean for one value)."""
    if not values:
        raise AttnKitError("t_interval needs at least one value; got none")
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def summarize(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean, 95% interval and time-to-threshold medians of one model's fold results."""
    accs = [r["accuracy"] for r in per_fold.values()]
    mean, low, high = t_interval(accs)
    out: dict[str, Any] = {"folds": sorted(int(k) for k in per_fold), "mean": mean, "ci95": [low, high],
                           "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                           "majority_mean": statistics.fmean(r["majority"] for r in per_fold.values()),
                           "train_seconds_mean": statistics.fmean(r["seconds"] or 0.0 for r in per_fold.values()),
                           "steps_mean": statistics.fmean(r["steps"] or 0 for r in per_fold.values())}
    reached: dict[str, Any] = {}
    for th in next(iter(per_fold.values()))["reached"]:
        hits = [r["reached"][th] for r in per_fold.values() if r["reached"].get(th)]
        reached[th] = {"folds_reaching": len(hits),
                       "median_step": statistics.median(h["step"] for h in hits) if hits else None,
                       "median_seconds": statistics.median(h["seconds"] for h in hits) if hits else None}
    out["time_to_valid_accuracy"] = reached
    return out


def crossval(data: str, models: Sequence[str], out: str | Path, *, folds: Sequence[int] = tuple(range(1, FOLDS + 1)),
             runs: str | Path = "runs/sentiment-cv", seed: int = 0, budget_minutes: float | None = None,
             progress: bool = False, tune_layers: int | None = None,
             encoder: str = DEFAULT_ENCODER) -> dict[str, Any]:
    """Run ``models`` on ``folds`` of ``data``; extend and return the JSON table in ``out``.
    ``tune_layers`` applies to ``minilm-ft`` and ``minilm-ft-lex`` (default: its preset's); ``encoder`` to the models on
    MiniLM states (the lexical models read the text and ignore it)."""
    from .models import ModelConfig, fine_tuned
    from .task import PRESETS, train

    for m in models:
        if m not in MODEL_DATA[data]:
            raise AttnKitError(f"--models {m!r} does not run on {data}; expected among {', '.join(MODEL_DATA[data])}")
    check_encoder(encoder, data)
    out = Path(out)
    table: dict[str, Any] = read_json(out) if out.exists() else {"data": data, "folds_total": FOLDS, "models": {}}
    if table.get("data") != data:
        raise AttnKitError(f"{out} holds a {table.get('data')!r} table; expected {data!r}")
    for model in models:
        options = {}
        if fine_tuned(model):
            preset = ModelConfig(model, **PRESETS[(model, False)].model)
            options["tune_layers"] = preset.tune_layers if tune_layers is None else ModelConfig(
                model, tune_layers=tune_layers).tune_layers
        key = model
        if encoder != DEFAULT_ENCODER and model not in LEXICAL_MODELS:
            options["encoder"] = encoder
            key = f"{model}@{encoder}"
        entry = table["models"].setdefault(key, {"per_fold": {}, **({"options": options} if options else {})})
        entry["model"] = model
        if entry.get("options", {}) != options and entry["per_fold"]:
            raise AttnKitError(f"{out} holds {model} folds run with {entry.get('options', {})}; got {options} "
                               f"(write to another --out)")
        if options:
            entry["options"] = options
        for fold in folds:
            if str(fold) in entry["per_fold"]:
                continue
            run_dir = Path(runs) / data / key / f"fold-{fold}"
            if (run_dir / "config.json").exists():
                import shutil

                shutil.rmtree(run_dir)
            _, res = train(data=data, model=model, fold=fold, out=run_dir, seed=seed, progress=progress,
                           budget_minutes=budget_minutes, pictures=False, **options)
            entry["per_fold"][str(fold)] = {"accuracy": res["test"]["accuracy"],
                                            "majority": res["baselines"]["majority-class"]["accuracy"],
                                            "steps": res["train"]["steps"], "seconds": res["train"]["seconds"],
                                            "stopped": res["train"]["stopped"],
                                            "reached": res["time_to_valid_accuracy"]}
            entry["summary"] = summarize(entry["per_fold"])
            write_json(out, table)
            s = entry["summary"]
            print(f"{data} {key}: {len(s['folds'])} folds, mean {s['mean']:.4f} "
                  f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]", flush=True)
    return table


def markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: accuracy with its 95% interval, and the time to each validation threshold."""
    from .models import LEXICAL_MODELS, MODELS, SKLEARN_MODELS, has_attention

    rows = ["| model | attention | folds | mean accuracy | 95% interval | majority class | train s / fold "
            "| steps / fold |",
            "|---|---|---|---|---|---|---|---|"]
    times = []
    for key, entry in table["models"].items():
        s = entry.get("summary")
        if not s:
            continue
        model = entry.get("model", key)
        opts = "".join(f", {k}={v}" for k, v in entry.get("options", {}).items())
        what = MODELS[model]
        if "encoder" in entry.get("options", {}):  # states of another encoder than the published MiniLM
            what = what.replace("frozen MiniLM", f"frozen {entry['options']['encoder']}")
        rows.append(f"| {model}{opts}: {what} | {'yes' if has_attention(model) else 'no'} | "
                    f"{len(s['folds'])} | "
                    f"{s['mean']:.3f} | [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | {s['majority_mean']:.3f} | "
                    f"{s['train_seconds_mean']:.0f} | {s['steps_mean']:.0f} |")
        cells = []
        for r in s["time_to_valid_accuracy"].values():
            cells.append(f"{r['folds_reaching']}/{len(s['folds'])}" + (
                f", step {r['median_step']:.0f}, {r['median_seconds']:.0f} s" if r["median_step"] is not None else ""))
        if model not in SKLEARN_MODELS + LEXICAL_MODELS:  # a single fit has no training curve
            times.append((f"{model}{opts}", cells, list(s["time_to_valid_accuracy"])))
    if times and any(t[1] for t in times):
        ths = next(t[2] for t in times if t[2])
        rows += ["", "| model | " + " | ".join(f"valid acc >= {th}: folds, median step, s" for th in ths) + " |",
                 "|---|" + "---|" * len(ths)]
        rows += [f"| {m} | " + " | ".join(c) + " |" for m, c, _ in times if c]
    return "\n".join(rows)


def _table(path: str, flag: str) -> dict[str, Any]:
    """The cross-validation table in ``path``, or a clear error naming ``flag``."""
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        raise AttnKitError(f"{flag}: cannot read the table {path!r} ({type(e).__name__}: {e})") from None


def _fail(message: str) -> int:
    """A command-line mistake: one ``error:`` line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def _row(spec: str) -> tuple[str, dict[str, float]]:
    """``FILE.json:KEY`` -> (``KEY``, its test accuracy per fold)."""
    path, sep, key = spec.rpartition(":")
    if not sep or not path:
        raise AttnKitError(f"--paired {spec!r}: expected FILE.json:MODEL (a table and one of its rows)")
    table = _table(path, "--paired")
    if key not in table.get("models", {}):
        raise AttnKitError(f"--paired {spec!r}: {path} has no row {key!r}; expected one of "
                           f"{', '.join(table.get('models', {}))}")
    return key, {f: r["accuracy"] for f, r in table["models"][key]["per_fold"].items()}


def paired(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """The paired difference ``a - b`` of two models' per-fold accuracies (``{fold: accuracy}``)
    over their common folds: mean and 95% t-interval (in accuracy units), folds better / equal."""
    common = sorted(set(a) & set(b), key=int)
    if not common:
        raise AttnKitError(f"the two rows share no fold; got folds {sorted(a)} and {sorted(b)}")
    diffs = [a[f] - b[f] for f in common]
    mean, low, high = t_interval(diffs)
    return {"folds": [int(f) for f in common], "mean": mean, "ci95": [low, high],
            "better": sum(d > 1e-9 for d in diffs), "equal": sum(abs(d) <= 1e-9 for d in diffs), "per_fold": diffs}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnkit.apps.sentiment.crossval", description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=DATASETS, default="sentences")
    ap.add_argument("--models", nargs="+", default=None, help="default: every model of the data set")
    ap.add_argument("--folds", nargs="+", type=int, default=list(range(1, FOLDS + 1)))
    ap.add_argument("--out", default=None, help="JSON file (default runs/sentiment-cv-<data>.json)")
    ap.add_argument("--runs", default="runs/sentiment-cv", help="folder of the per-fold run folders")
    ap.add_argument("--budget-minutes", type=float, default=None, help="per-fold training budget (default: preset's)")
    ap.add_argument("--tune-layers", type=int, default=None,
                    help="minilm-ft(-lex): how many top MiniLM layers are fine-tuned, 1..6 (default: the preset's)")
    ap.add_argument("--encoder", choices=tuple(ENCODERS), default=DEFAULT_ENCODER,
                    help="reviews: whose token states the MiniLM-state models read (default: the published MiniLM)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print the table in --out as Markdown and stop")
    ap.add_argument("--paired", nargs=2, metavar="FILE.json:MODEL", default=None,
                    help="print the paired difference (first minus second) of two rows over their common folds")
    a = ap.parse_args(argv)
    if a.paired:
        try:
            (ka, ra), (kb, rb) = _row(a.paired[0]), _row(a.paired[1])
            d = paired(ra, rb)
        except AttnKitError as e:
            return _fail(str(e))
        print(f"{ka} - {kb}: {100 * d['mean']:+.2f} points [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}] "
              f"over {len(d['folds'])} folds; better / equal on {d['better']} / {d['equal']}")
        return 0
    if a.markdown:
        try:
            print(markdown(_table(a.out or f"runs/sentiment-cv-{a.data}.json", "--markdown")))
        except AttnKitError as e:
            return _fail(str(e))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    bad = [f for f in a.folds if not 1 <= f <= FOLDS]
    if bad:
        return _fail(f"--folds {bad}; expected integers from 1 to {FOLDS}")
    out = a.out or f"runs/sentiment-cv-{a.data}.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        crossval(a.data, a.models or MODEL_DATA[a.data], out, folds=a.folds, runs=a.runs,
                 budget_minutes=a.budget_minutes, tune_layers=a.tune_layers, encoder=a.encoder)
    except AttnKitError as e:
        return _fail(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
