"""The deletion test across folds: one model's ``faithfulness.json`` of every fold, summarised.

``python -m attnkit.apps.sentiment.faithfulness_folds runs/sentiment-cv/reviews/han@minilm-sentft
runs/sentiment-cv-rerun/reviews/han`` reads ``fold-K/faithfulness.json`` under each model folder
(as ``python -m attnkit.apps.sentiment.faithfulness RUN`` writes them) and prints, per model, the
mean AOPC of each ranking over the folds with its 95% t-interval, and the paired per-fold
differences attention - random and attention - gradient x input (folds where attention is ahead).
One fold's AOPC is one draw of held-out texts; the folds are what makes a difference resolved.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import AttnKitError
from .crossval import paired, t_interval

__all__ = ["RANKINGS", "fold_results", "summarize_folds", "markdown", "main"]

RANKINGS = ("attention", "grad_x_input", "random")


def fold_results(model_dir: str | Path, name: str = "faithfulness") -> dict[str, dict[str, float]]:
    """``{fold: {ranking: AOPC}}`` from ``model_dir/fold-K/<name>.json``; a clear error when none is there
    or a file lacks a ranking."""
    model_dir = Path(model_dir)
    out: dict[str, dict[str, float]] = {}
    for path in sorted(model_dir.glob(f"fold-*/{name}.json")):
        aopc = json.loads(path.read_text()).get("aopc", {})
        missing = [r for r in RANKINGS if r not in aopc]
        if missing:
            raise AttnKitError(f"{path} has no AOPC for {missing}; expected the file the faithfulness command writes")
        out[path.parent.name.removeprefix("fold-")] = {r: float(aopc[r]) for r in RANKINGS}
    if not out:
        raise AttnKitError(f"no fold-*/{name}.json under {model_dir}; run "
                           "`python -m attnkit.apps.sentiment.faithfulness RUN` on its fold runs first")
    return out


def summarize_folds(model_dir: str | Path, name: str = "faithfulness") -> dict[str, Any]:
    """Mean AOPC per ranking with 95% t-intervals over the folds, and the paired differences of
    attention against random and against gradient x input."""
    folds = fold_results(model_dir, name)
    by = {r: {f: v[r] for f, v in folds.items()} for r in RANKINGS}
    res: dict[str, Any] = {"model_dir": str(model_dir), "folds": sorted(int(f) for f in folds)}
    for r in RANKINGS:
        mean, low, high = t_interval(list(by[r].values()))
        res[r] = {"mean": mean, "ci95": [low, high]}
    res["attention_minus_random"] = paired(by["attention"], by["random"])
    res["attention_minus_grad_x_input"] = paired(by["attention"], by["grad_x_input"])
    return res


def _iv(x: dict[str, Any]) -> str:
    return f"{x['mean']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The summaries as a Markdown table."""
    lines = ["| model folder | folds | AOPC attention | AOPC gradient x input | AOPC random | "
             "attention - random (folds ahead) | attention - gradient x input (folds ahead) |",
             "|---|---|---|---|---|---|---|"]
    for s in rows:
        ar, ag = s["attention_minus_random"], s["attention_minus_grad_x_input"]
        lines.append(f"| {s['model_dir']} | {len(s['folds'])} | {_iv(s['attention'])} | {_iv(s['grad_x_input'])} | "
                     f"{_iv(s['random'])} | {_iv(ar)} ({ar['better']}) | {_iv(ag)} ({ag['better']}) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnkit.apps.sentiment.faithfulness_folds",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="a folder of fold-K runs")
    ap.add_argument("--name", default="faithfulness",
                    help="the result file's name without .json (faithfulness-keep-lex: han-lex with its score kept)")
    a = ap.parse_args(argv)
    try:
        rows = [summarize_folds(d, a.name) for d in a.model_dirs]
    except AttnKitError as e:  # a command-line mistake: one error line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
