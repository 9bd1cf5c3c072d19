"""The cross-attention picture of a transcription: the log-mel spectrogram with each word drawn at
its DTW time, and under it the alignment matrix (text tokens x 20 ms audio positions; the
alignment heads' cross-attention, standardised, median-filtered, averaged) with the DTW path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from ...models.whisper.timing import SECONDS_PER_POSITION, AlignmentResult

__all__ = ["cross_attention_picture"]


def cross_attention_picture(mel: Tensor, alignment: AlignmentResult, token_labels: Sequence[str],
                            duration: float, out: str | Path, title: str = "") -> Path:
    """Write the picture to ``out`` (.png, .svg, .pdf); ``mel (M, F)`` covers at least ``duration`` s."""
    from matplotlib.figure import Figure

    out = Path(out)
    n_tok = len(token_labels)
    fig = Figure(figsize=(max(8.0, 1.4 * duration + 3), 4.0 + 0.18 * n_tok), dpi=110)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, max(1.0, 0.12 * n_tok)]})
    frames = int(round(duration * 100))
    m = mel[:, :frames].float().numpy()
    top.imshow(m, origin="lower", aspect="auto", cmap="magma", extent=(0, frames / 100, 0, m.shape[0]))
    top.set_ylabel("mel bin")
    for wt in alignment.words:
        top.axvline(wt.start, color="white", lw=0.8, alpha=0.8)
        top.text((wt.start + wt.end) / 2, m.shape[0] + 2, wt.word.strip(), ha="center", va="bottom", fontsize=8,
                 rotation=30)
    if title:
        top.set_title(title, fontsize=9, pad=28)
    mat = alignment.matrix
    if mat.size:
        s = mat.shape[1]
        bottom.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest",
                      extent=(0, s * SECONDS_PER_POSITION, mat.shape[0] - 0.5, -0.5))
        rows, cols = alignment.path
        bottom.plot((np.asarray(cols) + 0.5) * SECONDS_PER_POSITION, rows, color="red", lw=1.0, label="DTW path")
        bottom.set_yticks(range(mat.shape[0]))
        bottom.set_yticklabels(list(token_labels)[: mat.shape[0]], fontsize=7)
        bottom.legend(loc="upper right", fontsize=7)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("token")
    bottom.set_xlim(0, duration)
    fig.tight_layout()
    fig.savefig(out)
    return out
