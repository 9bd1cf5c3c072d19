"""Pictures of translation runs (matplotlib, written to files): alignment heatmaps (source
tokens x target tokens), one per layer and head for transformers, and quality by source length.

Shape legend: L layers, H heads, T target tokens, S source tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .models import Translator
from .tokenizer import BOS, EOS, PAD, SubwordTokenizer

__all__ = ["alignment_heatmap", "head_grid", "translation_alignment", "bucket_plot", "curves_plot"]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def _label(tokens: Sequence[str]) -> list[str]:
    return [t.replace("\u2581", "_") for t in tokens]


def _draw(ax, m: Tensor, src: Sequence[str], tgt: Sequence[str], fontsize: float = 8):
    im = ax.imshow(m.float().numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(src)))
    ax.set_xticklabels(_label(src), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(tgt)))
    ax.set_yticklabels(_label(tgt), fontsize=fontsize)
    return im


def alignment_heatmap(weights: Tensor, src_tokens: Sequence[str], tgt_tokens: Sequence[str], path: str | Path,
                      *, title: str = "") -> Path:
    """One heatmap ``weights (T, S)``: rows the emitted target tokens, columns the source tokens."""
    t, s = weights.shape
    fig = _figure(max(4.0, 0.32 * s + 2.5), max(3.0, 0.3 * t + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    im = _draw(ax, weights, src_tokens, tgt_tokens)
    ax.set_xlabel("source token (attended)")
    ax.set_ylabel("target token (emitted)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention weight")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def head_grid(weights: Tensor, src_tokens: Sequence[str], tgt_tokens: Sequence[str], path: str | Path,
              *, title: str = "") -> Path:
    """Every layer and head ``weights (L, H, T, S)`` plus each layer's head mean, one grid."""
    n_layers, n_heads, t, s = weights.shape
    cols = n_heads + 1
    cell_w, cell_h = max(2.2, 0.2 * s + 1.2), max(2.0, 0.2 * t + 1.0)
    fig = _figure(cell_w * cols + 1.0, cell_h * n_layers + 0.8)
    im = None
    for layer in range(n_layers):
        views = [*(weights[layer, h] for h in range(n_heads)), weights[layer].mean(0)]
        for c, m in enumerate(views):
            ax = fig.add_subplot(n_layers, cols, layer * cols + c + 1)
            im = _draw(ax, m, src_tokens, tgt_tokens, fontsize=5)
            ax.set_title(f"layer {layer} " + (f"head {c}" if c < n_heads else "mean"), fontsize=7)
    fig.suptitle(title + " (rows: target tokens emitted, columns: source tokens)", fontsize=9)
    fig.subplots_adjust(hspace=0.75, wspace=0.45, bottom=0.12, top=0.9, left=0.06, right=0.9)
    if im is not None:
        fig.colorbar(im, ax=fig.axes, fraction=0.02, pad=0.01, label="attention weight")
    fig.savefig(path)
    return Path(path)


@torch.no_grad()
def translation_alignment(model: Translator, tok: SubwordTokenizer, text: str, path: str | Path,
                          *, translation: str | None = None) -> list[Path]:
    """Translate ``text`` (greedy) and draw the cross-attention behind the output: the average over
    heads of the last layer at ``path``, and for transformers every layer and head beside it
    (``<stem>-heads.png``). Returns the files written (none for a model without attention)."""
    from .decoding import greedy

    model.eval()
    src_ids = tok.encode(text) + [EOS]
    src = torch.tensor([src_ids])
    if translation is None:
        out = greedy(model, src, src != PAD, min(model.config.max_len - 1, 2 * len(src_ids) + 10))[0].tolist()
        out = [i for i in out if i != PAD]
    else:
        out = tok.encode(translation) + [EOS]
    tgt_in = torch.tensor([[BOS] + out[:-1]]) if out else torch.tensor([[BOS]])
    w = model.alignments(src, src != PAD, tgt_in)  # (L, H, 1, T, S)
    if w is None:
        return []
    w = w[:, :, 0]  # (L, H, T, S)
    src_tokens, tgt_tokens = tok.tokens(src_ids), tok.tokens(out or [EOS])
    path = Path(path)
    kind = model.config.kind
    made = [alignment_heatmap(w[-1].mean(0), src_tokens, tgt_tokens, path,
                              title=f"{kind}: cross-attention" + (" (last layer, mean of heads)" if w.shape[1] > 1
                                                                  else ""))]
    if w.shape[0] * w.shape[1] > 1:
        made.append(head_grid(w, src_tokens, tgt_tokens, path.with_name(path.stem + "-heads" + path.suffix),
                              title=f"{kind}: cross-attention per layer and head"))
    return made


def bucket_plot(by_model: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path, *,
                metric: str = "exact", title: str = "") -> Path:
    """Held-out ``metric`` by source-length bucket, one line per model: ``{model: {bucket: {metric, n}}}``."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for model, buckets in by_model.items():
        names = list(buckets)
        ax.plot(range(len(names)), [100 * buckets[b][metric] if metric == "exact" else buckets[b][metric]
                                    for b in names], marker="o", label=model)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{b}\n(n={buckets[b]['n']})" for b in names], fontsize=8)
    ax.set_xlabel("source length (words)")
    ax.set_ylabel("exact match on held-out test pairs (%)" if metric == "exact" else metric)
    return _finish(fig, ax, title, path)


def curves_plot(by_model: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, x: str = "seconds",
                metric: str = "exact", title: str = "") -> Path:
    """Validation ``metric`` against training ``x`` (``seconds`` or ``step``), one line per model."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for model, evals in by_model.items():
        scale = 100 if metric == "exact" else 1
        ax.plot([e[x] for e in evals if metric in e], [scale * e[metric] for e in evals if metric in e], marker=".",
                label=model)
    ax.set_xlabel("training seconds" if x == "seconds" else "training steps")
    ax.set_ylabel("exact match on validation pairs (%)" if metric == "exact" else f"{metric} on validation pairs")
    return _finish(fig, ax, title, path)


def _finish(fig: Any, ax: Any, title: str, path: str | Path) -> Path:
    """Title, grid and legend on a line chart, then save it to ``path``."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
