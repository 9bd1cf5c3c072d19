"""Shared by the summarization model tests: a tiny model and the copy task a pointer must learn."""

from __future__ import annotations

from functools import cache

import torch

from attnkit.apps.summarization.models import BOS, EOS, UNK, SummConfig, build_model
from attnkit.apps.summarization.task import _loss

V = 12  # 4 specials + 8 words


def tiny(kind: str, seed: int = 0, **sizes) -> torch.nn.Module:
    """A one-layer summarizer of ``kind`` over the ``V``-word vocabulary, seeded."""
    torch.manual_seed(seed)
    return build_model(SummConfig(kind, vocab=V, **(dict(d_model=32, emb_dim=16, layers=1, heads=2, ff=64,
                                                         dropout=0.0, max_len=32) | sizes)))


def copy_task(n: int, seed: int) -> dict:
    """Sources of in-vocabulary words with one unknown word at a random place; the summary is that word."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (n, 6), generator=g)
    pos = torch.randint(0, 6, (n,), generator=g)
    ext = src.clone()
    ext[torch.arange(n), pos] = V
    src = src.masked_fill(ext >= V, UNK)
    eos = torch.full((n, 1), EOS)
    src, ext = torch.cat((src, eos), 1), torch.cat((ext, eos), 1)
    return {"src": src, "src_ext": ext, "tgt": torch.tensor([[BOS, V, EOS]]).repeat(n, 1), "n_ext": 1}


@cache
def trained_copier() -> torch.nn.Module:
    """A tiny pointer-generator trained 150 steps on :func:`copy_task`, in eval mode (trained once)."""
    model = tiny("pointer")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        loss, _ = _loss(model, copy_task(32, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
