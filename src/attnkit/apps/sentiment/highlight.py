"""Attention highlights of classified texts: an HTML page (tokens shaded by their attention
weight, sentences marked by theirs for the hierarchical model) and a PNG of the same.

WordPiece pieces are joined back into words for display (a word's weight is the sum of its
pieces'); ``[CLS]`` and ``[SEP]`` are shown only when they carry weight above the display cut-off.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import AttnKitError

if TYPE_CHECKING:
    from .loaded import LoadedRun, Prediction

__all__ = ["words_of", "top_tokens", "highlight_html", "highlight_png", "highlight_run"]

_SPECIAL = ("[CLS]", "[SEP]", "[PAD]")


def words_of(tokens: Sequence[str], weights: Sequence[float] | None) -> list[tuple[str, float]]:
    """WordPiece ``tokens`` joined into words with summed weights (0 without weights); special tokens kept."""
    out: list[tuple[str, float]] = []
    for i, tok in enumerate(tokens):
        w = float(weights[i]) if weights is not None else 0.0
        if tok.startswith("##") and out and out[-1][0] not in _SPECIAL:
            out[-1] = (out[-1][0] + tok[2:], out[-1][1] + w)
        else:
            out.append((tok, w))
    return out


def top_tokens(pred: Prediction, k: int = 8) -> list[tuple[str, float]]:
    """The ``k`` words with the largest attention (sentence weight times word weight for the hierarchical model)."""
    if pred.token_weights is None:
        return []
    scored = []
    for j, (toks, tw) in enumerate(zip(pred.units, pred.token_weights)):
        scale = pred.unit_weights[j] if pred.unit_weights is not None else 1.0
        scored.extend((w, s * scale) for w, s in words_of(toks, tw) if w not in _SPECIAL)
    return sorted(scored, key=lambda x: -x[1])[:k]


def _shade(w: float, top: float) -> str:
    a = 0.0 if top <= 0 else min(1.0, w / top)
    return f"rgba(255, 140, 0, {a:.2f})"


def highlight_html(preds: Sequence[Prediction], path: str | Path, titles: Sequence[str] | None = None) -> Path:
    """One HTML page with each prediction's text shaded by attention."""
    parts = ["<!doctype html><meta charset='utf-8'><title>attnkit sentiment highlights</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.9}"
             ".s{border-left:6px solid;padding-left:.5em;margin:.2em 0}span{padding:1px 2px;border-radius:3px}"
             "</style>"]
    for n, pred in enumerate(preds):
        title = titles[n] if titles else f"text {n + 1}"
        parts.append(f"<h3>{html.escape(title)}: {pred.label} ({pred.probability:.3f})</h3>")
        if pred.token_weights is None:
            parts.append("<p><i>this model has no attention to show</i></p>")
        for j, toks in enumerate(pred.units):
            tw = pred.token_weights[j] if pred.token_weights is not None else None
            words = [(w, s) for w, s in words_of(toks, tw) if w not in _SPECIAL]
            top = max((s for _, s in words), default=0.0)
            spans = " ".join(f"<span style='background:{_shade(s, top)}' title='{s:.3f}'>{html.escape(w)}</span>"
                             for w, s in words)
            if pred.unit_weights is not None:
                uw = pred.unit_weights[j]
                utop = max(pred.unit_weights)
                parts.append(f"<div class='s' style='border-color:rgba(30,90,200,{min(1.0, uw / utop):.2f})' "
                             f"title='sentence weight {uw:.3f}'>{spans}</div>")
            else:
                parts.append(f"<p>{spans}</p>")
    path = Path(path)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def highlight_png(pred: Prediction, path: str | Path, title: str = "", max_units: int = 24,
                  width_chars: int = 100) -> Path:
    """A picture of one prediction: words on wrapped lines, shaded by attention (orange), and for
    the hierarchical model a bar of each sentence's weight (blue) on the left. At most ``max_units``
    sentences are drawn (the most attended ones, in text order, when there are more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if pred.token_weights is None:
        raise AttnKitError(f"no highlight for this prediction: the model has no attention (label {pred.label})")
    units = list(range(len(pred.units)))
    note = ""
    if len(units) > max_units:
        keep = sorted(units, key=lambda j: -(pred.unit_weights or [0] * len(units))[j])[:max_units]
        units = sorted(keep)
        note = f" ({max_units} most attended of {len(pred.units)} sentences)"
    lines: list[tuple[int, list[tuple[str, float]]]] = []  # (unit, words)
    for j in units:
        words = [(w, s) for w, s in words_of(pred.units[j], pred.token_weights[j]) if w not in _SPECIAL]
        line: list[tuple[str, float]] = []
        used = 0
        for w, s in words:
            if line and used + len(w) + 1 > width_chars:
                lines.append((j, line))
                line, used = [], 0
            line.append((w, s))
            used += len(w) + 1
        lines.append((j, line))
    top = max((s for _, ln in lines for _, s in ln), default=1.0) or 1.0
    n = max(1, len(lines))
    fig_h = min(16.0, 0.9 + 0.28 * n)
    fig = plt.figure(figsize=(12, fig_h), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.6 / fig_h))
    ax.set_xlim(0, width_chars + 8)
    ax.set_ylim(n, -0.5)
    ax.axis("off")
    prev = None
    for row, (j, ln) in enumerate(lines):
        if pred.unit_weights is not None and j != prev:
            uw = pred.unit_weights[j] / max(pred.unit_weights)
            ax.add_patch(plt.Rectangle((0.2, row - 0.4), 5.5 * uw, 0.8, color=(0.12, 0.35, 0.8)))
        prev = j
        x = 7.0
        for w, s in ln:
            a = min(1.0, s / top)
            ax.text(x, row, w, fontsize=9, family="monospace", va="center",
                    bbox=dict(boxstyle="square,pad=0.1", fc=(1.0, 0.55, 0.0, a), ec="none"))
            x += len(w) + 1
    fig.suptitle((title + ": " if title else "") + f"{pred.label} ({pred.probability:.3f}); orange = attention "
                 "over words" + ("; blue bar = attention over sentences" if pred.unit_weights is not None else "")
                 + note, fontsize=10)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def highlight_run(lr: LoadedRun, texts: Sequence[str], prefix: str = "highlight") -> list[str]:
    """Highlights of ``texts`` with a run's model, written into the run folder (one PNG per text
    and one HTML page); the file names."""
    preds = lr.predict(list(texts))
    titles = [f"held-out text {i + 1}" for i in range(len(preds))]
    made = [highlight_html(preds, lr.run / f"{prefix}.html", titles).name]
    try:
        for i, p in enumerate(preds):
            made.append(highlight_png(p, lr.run / f"{prefix}-{i}.png", titles[i]).name)
    except ModuleNotFoundError:  # matplotlib (the viz extra) is optional
        pass
    return made
