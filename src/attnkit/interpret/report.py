"""Every view of one sentence at once: what ``attnkit explain`` writes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .capture import capture_attention
from .html import write_html
from .plot import head_grid, lines_view, matrix_view, model_overview
from .rollout import attention_flow, attention_rollout
from .stats import head_stats

__all__ = ["explain_sentence"]


def explain_sentence(model: Any, tokenizer: Any, sentence: str, out_dir: str | Path, *, impl: str | None = None,
                     options: Mapping[str, Any] | None = None, flow: bool = True, png: bool = True,
                     progress: bool = True) -> dict[str, Path]:
    """Run ``model`` (a :class:`~attnkit.models.bert.SentenceEncoder`) on ``sentence``, capture
    every layer's attention and write the views to ``out_dir``: ``report.html`` (self-contained),
    ``overview.png``, ``layer<l>_heads.png`` per layer, ``lines_layer<l>.png`` per layer,
    ``rollout.png``, ``flow.png`` and ``stats.json`` / ``stats.md``. Returns name -> path."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = tokenizer.tokenize(sentence)
    batch = tokenizer([sentence])
    with torch.no_grad(), capture_attention(model) as cap:
        model(**batch, impl=impl, options=options)
    att = cap.stack()[:, 0]  # (L, H, T, T)
    n_layers = att.shape[0]
    steps = ["stats", "rollout", *(["flow"] if flow else []), "html",
             *([f"png layer {ell}" for ell in range(n_layers)] + ["png overview"] if png else [])]
    paths: dict[str, Path] = {}
    roll = fl = None
    bar = tqdm(steps, desc="explain", unit="view", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "stats":
            stats = head_stats(att, tokens)
            (out / "stats.json").write_text(json.dumps({"tokens": tokens, **stats.as_dict()}, indent=1))
            (out / "stats.md").write_text(stats.summary() + "\n\n" + stats.table() + "\n")
            paths["stats"] = out / "stats.md"
        elif step == "rollout":
            roll = attention_rollout(att)
            if png:
                paths["rollout"] = matrix_view(roll, tokens, out / "rollout.png", title="attention rollout")
        elif step == "flow":
            fl = attention_flow(att)
            if png:
                paths["flow"] = matrix_view(fl, tokens, out / "flow.png", title="attention flow")
        elif step == "html":
            names = {r.impl for r in cap.records}
            paths["html"] = write_html(out / "report.html", att, tokens, title=f"attention: {sentence}",
                                       rollout=roll, flow=fl, stats=stats,
                                       note=f"{n_layers} layers x {att.shape[1]} heads; implementation(s): "
                                            f"{', '.join(sorted(names))}")
        elif step.startswith("png layer"):
            ell = int(step.rsplit(" ", 1)[1])
            paths[f"layer{ell}_heads"] = head_grid(att[ell], tokens, out / f"layer{ell}_heads.png",
                                                   title=f"layer {ell}")
            paths[f"lines_layer{ell}"] = lines_view(att[ell], tokens, out / f"lines_layer{ell}.png",
                                                    title=f"layer {ell}, all heads")
        elif step == "png overview":
            paths["overview"] = model_overview(att, out / "overview.png")
    return paths
