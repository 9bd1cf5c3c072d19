"""Pictures of summarization runs (matplotlib, written to files): the last decoder layer's
cross-attention over the source for each emitted word, and for the pointer model its copy
probability ``1 - p_gen`` per emitted word and the copy mass ``sum_t (1 - p_gen_t) a_{t,s}`` over
the source words.

Shape legend: T emitted words, S source words.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .models import BOS, EOS, PAD, TransformerSummarizer
from .task import collate, decode, encode

if TYPE_CHECKING:
    from .task import LoadedRun

__all__ = ["copy_picture"]

MAX_SOURCE = 60  # source words shown; longer inputs are cut and the title says so


@torch.no_grad()
def copy_picture(lr: LoadedRun, text: str, path: str | Path, *, beam: int = 1,
                 length_penalty: float = 1.0) -> Path | None:
    """The attention (and copy) picture of summarizing ``text`` with a run (greedy when ``beam`` is 1,
    else the best beam); None for a model without attention."""
    model = lr.model
    if not isinstance(model, TransformerSummarizer):
        return None
    from matplotlib.figure import Figure

    src_len, tgt_len = lr.config["src_len"], lr.config["tgt_len"]
    ex = encode(lr.vocab, text, None, src_len, tgt_len)
    batch = collate([ex])
    ids = decode(model, batch, tgt_len + 1, beam=beam, length_penalty=length_penalty)
    out = [i for i in ids[0].tolist() if i != PAD]
    if not out:
        return None
    tgt_in = torch.tensor([[BOS, *out[:-1]]])
    n_ext = batch["n_ext"] if model.copies else 0
    cross = model.cross_attention(batch["src"], batch["src"] != PAD, tgt_in, batch["src_ext"], n_ext)
    w = cross["weights"][0].float()  # (T, S)
    itos = lr.vocab.itos
    src_words = [ex.oov[i - len(itos)] if i >= len(itos) else itos[i] for i in ex.src_ext[:-1]] + ["</s>"]
    out_words = [("</s>" if i == EOS else ex.oov[i - len(itos)] if i >= len(itos) else itos[i]) for i in out]
    cut = len(src_words) > MAX_SOURCE
    s = min(len(src_words), MAX_SOURCE)
    w, src_words = w[:, :s], src_words[:s]
    t = len(out_words)
    copying = model.copies
    width = min(21.0, max(6.0, 0.22 * s + 3.0))
    height = min(19.0, max(4.0, 0.28 * t + (3.2 if copying else 2.0)))
    fig = Figure(figsize=(width, height), dpi=110)
    grid = fig.add_gridspec(2 if copying else 1, 2, width_ratios=[s, 1.6 if copying else 0.01],
                            height_ratios=[t, 2.2] if copying else [1], wspace=0.04, hspace=0.08)
    ax = fig.add_subplot(grid[0, 0])
    im = ax.imshow(w.numpy(), cmap="viridis", vmin=0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    ax.set_yticks(range(t))
    ax.set_yticklabels(out_words, fontsize=7)
    ax.set_ylabel("emitted word")
    title = f"{lr.config['model']['kind']}: last decoder layer cross-attention (head mean)"
    if cut:
        title += f"; first {MAX_SOURCE} source words shown"
    ax.set_title(title, fontsize=9)
    if copying:
        copy_p = 1 - cross["p_gen"][0].float()  # (T,)
        ax.set_xticks([])
        gx = fig.add_subplot(grid[0, 1], sharey=ax)
        gx.imshow(copy_p[:, None].numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto")
        for i, v in enumerate(copy_p.tolist()):
            gx.text(0, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        gx.set_xticks([0])
        gx.set_xticklabels(["copy\n1-p_gen"], fontsize=7)
        gx.tick_params(axis="y", left=False, labelleft=False)
        mass = (copy_p[:, None] * w).sum(0)  # (S,)
        bx = fig.add_subplot(grid[1, 0])
        bx.bar(range(s), mass.numpy(), color="tab:orange")
        bx.set_xlim(-0.5, s - 0.5)
        bx.set_ylabel("copy mass", fontsize=7)
        bx.set_xticks(range(s))
        bx.set_xticklabels(src_words, rotation=90, fontsize=7)
        bx.set_xlabel("source word")
    else:
        ax.set_xticks(range(s))
        ax.set_xticklabels(src_words, rotation=90, fontsize=7)
        ax.set_xlabel("source word")
    fig.colorbar(im, ax=fig.axes, fraction=0.02, pad=0.01, label="attention weight")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)
