"""Comparisons across translation runs and speed measurements: the tables and pictures of
docs/apps/translation.md.

* :func:`compare_runs`: quality by source length, time and steps to exact-match thresholds,
  alignment error, from the ``results.json`` and ``trainer_state.json`` of several runs; writes
  ``by-length.png`` and ``curves.png`` and returns Markdown tables.
* :func:`training_throughput`: target tokens per second of training steps, attnkit's transformer
  against the same configuration built from ``torch.nn.Transformer``, alternating so both see the
  same machine state.
* :func:`decoding_throughput`: generated tokens per second with and without the KV cache.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..trainer import read_json
from .decoding import greedy
from .models import ModelConfig, Translator, build_model
from .tokenizer import EOS, PAD

__all__ = ["compare_runs", "training_throughput", "decoding_throughput"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def compare_runs(runs: Sequence[str | Path], out_dir: str | Path | None = None) -> str:
    """Markdown tables comparing ``runs`` (pictures into ``out_dir`` when given)."""
    rows = []
    for r in runs:
        r = Path(r)
        rows.append((read_json(r / "results.json"), read_json(r / "trainer_state.json")))
    lines = ["| model | parameters | steps | train s | tokens/s | test exact % | chrF | BLEU "
             "| alignment error % (last layer, head mean) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res, st in rows:
        al = res.get("alignment_error")
        lines.append(f"| {res['model']} | {res['parameters']:,} | {st['step']} | {st['seconds']:.0f} | "
                     f"{res['train']['target_tokens_per_second']:,.0f} | {_pct(res['test']['exact'])} | "
                     f"{res['test']['chrf']:.1f} | {res['test']['bleu']:.1f} | "
                     f"{'-' if not al else _pct(al['last_layer_mean'])} |")
    base = rows[0][0]["baselines"]
    for name, b in base.items():
        lines.append(f"| baseline: {name} | - | - | - | - | {_pct(b['exact'])} | {b['chrf']:.1f} | "
                     f"{b['bleu']:.1f} | - |")
    metric = "chrf" if rows[0][0]["data"] == "bible" else "exact"
    show = (lambda v: "-" if v is None else f"{v:.1f}") if metric == "chrf" else _pct
    buckets = list(rows[0][0]["by_length"])
    lines += ["", f"{'chrF' if metric == 'chrf' else 'exact match'} by source length:", "",
              "| model | " + " | ".join(f"{b} words (n={rows[0][0]['by_length'][b]['n']})" for b in buckets) + " |",
              "|---|" + "---|" * len(buckets)]
    for res, _ in rows:
        lines.append(f"| {res['model']} | " + " | ".join(show(res["by_length"].get(b, {}).get(metric))
                                                         for b in buckets) + " |")
    key = f"time_to_valid_{metric}"
    ths = list(rows[0][0][key])
    def label(t: str) -> str:
        return f"valid chrF >= {float(t):.0f}" if metric == "chrf" else f"valid exact >= {float(t):.0%}"

    lines += ["", "| model | " + " | ".join(f"{label(t)}: step / s" for t in ths) + " |",
              "|---|" + "---|" * len(ths)]
    for res, _ in rows:
        cells = []
        for t in ths:
            hit = res[key][t]
            cells.append("not reached" if hit is None else f"{hit['step']} / {hit['seconds']:.0f}")
        lines.append(f"| {res['model']} | " + " | ".join(cells) + " |")
    if out_dir is not None:
        from .pictures import bucket_plot, curves_plot

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        first = rows[0][0]
        what = f"{first['data']} (en->{first['lang']})"
        bucket_plot({res["model"]: res["by_length"] for res, _ in rows}, out / "by-length.png",
                    title=f"held-out {what} by source length", metric=metric)
        curves_plot({res["model"]: st["evals"] for res, st in rows}, out / "curves.png",
                    title=f"validation {'chrF' if metric == 'chrf' else 'exact match'} during training, {what}",
                    metric=metric)
    return "\n".join(lines)


def _batch(vocab: int, b: int, s: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (b, s), generator=g), torch.randint(4, vocab, (b, t + 1), generator=g)


def training_throughput(config: ModelConfig, *, batch: int = 64, src_len: int = 16, tgt_len: int = 20,
                        steps: int = 20, rounds: int = 5, warmup: int = 3) -> dict[str, Any]:
    """Training target tokens per second of ``transformer`` (attnkit) and ``torch-transformer``
    with the sizes of ``config``: forward, loss, backward and an AdamW step on random tokens.
    The two alternate for ``rounds`` rounds of ``steps`` steps; the median of each is reported."""
    models = {kind: build_model(ModelConfig(**{**config.to_dict(), "kind": kind})).train()
              for kind in ("transformer", "torch-transformer")}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    src, tgt = _batch(config.vocab, batch, src_len, tgt_len)
    mask = src != PAD

    def run(kind: str, n: int) -> float:
        m, opt = models[kind], opts[kind]
        t0 = time.perf_counter()
        for _ in range(n):
            logits = m(src, mask, tgt[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    for kind in models:
        run(kind, warmup)
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for kind in models:
            rates[kind].append(steps * batch * tgt_len / run(kind, steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"tokens_per_second": med, "ratio_attnkit_over_torch": med["transformer"] / med["torch-transformer"],
            "rounds": rates, "batch": batch, "src_len": src_len, "tgt_len": tgt_len, "threads": torch.get_num_threads(),
            "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}}


class _NoEOS(Translator):
    """``inner`` with ``</s>`` ruled out, so every decoding run has the same length."""

    def __init__(self, inner: Translator):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, src, src_mask, tgt_in):
        return self.inner(src, src_mask, tgt_in).index_fill(-1, torch.tensor([EOS]), float("-inf"))

    def start(self, src, src_mask):
        return self.inner.start(src, src_mask)

    def step(self, state, tokens):
        return self.inner.step(state, tokens).index_fill(-1, torch.tensor([EOS]), float("-inf"))

    def reorder(self, state, index):
        self.inner.reorder(state, index)


@torch.no_grad()
def decoding_throughput(model, *, batch: int = 32, src_len: int = 16, new_tokens: int = 32,
                        rounds: int = 3) -> dict[str, float]:
    """Greedy decoding tokens per second of ``model`` with and without the KV cache (the model's
    own stopping is ignored: every row decodes ``new_tokens`` tokens; EOS is ruled out)."""
    model.eval()
    src, _ = _batch(model.config.vocab, batch, src_len, 1)
    mask = src != PAD

    wrapped = _NoEOS(model)
    out = {}
    for name, cached in (("cached", True), ("recomputed", False)):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            greedy(wrapped, src, mask, new_tokens, use_cache=cached)
            times.append(time.perf_counter() - t0)
        out[name] = batch * new_tokens / statistics.median(times)
    out["speedup"] = out["cached"] / out["recomputed"]
    return out
