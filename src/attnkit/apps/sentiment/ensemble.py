"""Ensembles of trained cross-validation runs: on each test fold, the mean of the members' P(positive).

``python -m attnkit.apps.sentiment.ensemble --data sentences --member runs/sentiment-cv-ftlex:minilm-ft-lex
--member runs/sentiment-cv:minilm-ft --out runs/sentiment-cv-sentences-ens.json`` loads each member's
run of each fold (``RUNS/<data>/<model>/fold-K``, as :mod:`.crossval` writes them), averages the
members' probabilities of the fold's held-out texts with equal weights, and writes a table in
:mod:`.crossval`'s form (``--paired`` and its rows read it): per fold the ensemble's accuracy and each
member's (recomputed from the loaded run, so a member whose weights changed is caught), the mean and
the 95% interval. Nothing is trained; the members' training seconds are summed per fold. A member's
row is named by its model, or by a label (``RUNS:MODEL=LABEL``) when two members are runs of one
model from different folders (say two- and six-layer fine-tuning).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import AttnKitError
from ..trainer import read_json, write_json
from .crossval import summarize
from .data import DATASETS, FOLDS, fold_split, load
from .loaded import load_run
from .task import test_probabilities

__all__ = ["member_runs", "ensemble", "main"]


def _parse(spec: str) -> tuple[str, str, str]:
    """``RUNS:MODEL[=LABEL]`` -> (runs, model, label); the label defaults to the model."""
    runs, sep, rest = spec.rpartition(":")
    model, eq, label = rest.partition("=")
    if not sep or not runs or not model or (eq and not label):
        raise AttnKitError(f"--member {spec!r}: expected RUNS:MODEL or RUNS:MODEL=LABEL "
                           "(a cross-validation runs folder, a model and optionally the row's label)")
    return runs, model, label or model


def member_runs(spec: str, data: str, folds: Sequence[int]) -> tuple[str, dict[int, Path]]:
    """``RUNS:MODEL[=LABEL]`` -> (its row label, its run folder per fold), or a clear error naming
    what is missing."""
    runs, model, label = _parse(spec)
    paths = {f: Path(runs) / data / model / f"fold-{f}" for f in folds}
    missing = [f for f, p in paths.items() if not (p / "config.json").exists()]
    if missing:
        raise AttnKitError(f"--member {spec!r}: no run of folds {missing} under {Path(runs) / data / model}; "
                           "expected the runs `python -m attnkit.apps.sentiment.crossval` writes")
    return label, paths


def ensemble(data: str, members: Sequence[str], *, folds: Sequence[int] = tuple(range(1, FOLDS + 1)),
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """The equal-weight ensemble of ``members`` (``RUNS:MODEL`` each, two or more) on ``folds``
    of ``data``: a :mod:`.crossval` table with one row ``ensemble`` and one per member."""
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    if len(members) < 2:
        raise AttnKitError(f"an ensemble needs two or more --member; got {len(members)}")
    bad = [f for f in folds if not 1 <= f <= FOLDS]
    if bad:
        raise AttnKitError(f"--folds {bad}; expected integers from 1 to {FOLDS}")
    names = [_parse(m)[2] for m in members]
    if len(set(names)) != len(names):
        raise AttnKitError(f"--member rows must differ (a row is named by its model, or by LABEL in "
                           f"RUNS:MODEL=LABEL); got {names}")
    loaded = [member_runs(m, data, folds) for m in members]
    examples = load(data)
    labels = torch.tensor([e.label for e in examples])
    rows: dict[str, dict[str, Any]] = {"ensemble": {"model": "ensemble", "members": list(members), "per_fold": {}}}
    rows.update({m: {"model": m, "per_fold": {}} for m in names})
    for f in folds:
        train_idx, _, test_idx = fold_split(examples, f)
        y = labels[test_idx]
        majority = float((y == labels[train_idx].mode().values).float().mean())
        probs, seconds = [], 0.0
        for model, paths in loaded:
            lr = load_run(paths[f])
            if lr.config.get("fold") != f or lr.data != data:
                raise AttnKitError(f"{paths[f]} is a run of fold {lr.config.get('fold')} on {lr.data}; "
                                   f"expected fold {f} on {data}")
            p = test_probabilities(lr, examples, test_idx, log=lambda *_: None)
            if torch.isnan(p).any():
                raise AttnKitError(f"{paths[f]} gave NaN probabilities on fold {f}")
            probs.append(p)
            state = read_json(paths[f] / "trainer_state.json") if (paths[f] / "trainer_state.json").exists() else {}
            secs = state.get("seconds") or lr.config.get("train", {}).get("fit_seconds") or 0.0
            seconds += secs
            rows[model]["per_fold"][str(f)] = _fold(p, y, majority, secs)
        mean_p = torch.stack(probs).mean(0)
        rows["ensemble"]["per_fold"][str(f)] = _fold(mean_p, y, majority, seconds)
        log(f"fold {f}: ensemble {rows['ensemble']['per_fold'][str(f)]['accuracy']:.4f}  " + "  ".join(
            f"{m} {rows[m]['per_fold'][str(f)]['accuracy']:.4f}" for m in names))
    for r in rows.values():
        r["summary"] = summarize(r["per_fold"])
    return {"data": data, "folds_total": FOLDS, "models": rows}


def _fold(p: torch.Tensor, y: torch.Tensor, majority: float, seconds: float) -> dict[str, Any]:
    return {"accuracy": float(((p > 0.5).long() == y).float().mean()), "majority": majority, "steps": None,
            "seconds": seconds, "stopped": None, "reached": {}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnkit.apps.sentiment.ensemble", description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=DATASETS, default="sentences")
    ap.add_argument("--member", action="append", default=[], metavar="RUNS:MODEL[=LABEL]",
                    help="a member: the runs folder crossval wrote (its --runs), the model and optionally "
                         "its row's label (twice or more)")
    ap.add_argument("--folds", nargs="+", type=int, default=list(range(1, FOLDS + 1)))
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        table = ensemble(a.data, a.member, folds=a.folds)
    except AttnKitError as e:  # a command-line mistake: one error line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, r in table["models"].items():
        s = r["summary"]
        print(f"{key}: mean {s['mean']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] over {len(s['folds'])} folds")
    if a.out:
        write_json(a.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
