"""Is the attention faithful? A deletion test in the manner of Jain & Wallace (2019) and the
AOPC of DeYoung et al. (2020).

For each held-out sentence the model predicts a class with probability ``p``. Its (non-special)
WordPiece tokens are ranked three ways: by the attention-pooling weight, by gradient x input
(the gradient of the predicted class's log-probability with respect to the input word
embeddings, dotted with them) and at random. Deleting the ``k`` top-ranked tokens from the input
and running the whole model again gives ``p_k``; the curve is the mean drop ``p - p_k`` for each
``k``, and AOPC is its mean over ``k``. A ranking that finds what the model relies on drops
the probability more than a random one.

``python -m attnkit.apps.sentiment.faithfulness RUN`` writes ``faithfulness.json`` and
``faithfulness.png`` into the run folder.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import write_json
from .data import fold_split, load
from .models import input_kind
from .task import MAX_TOKENS, LoadedRun, _pad_rows, load_run

__all__ = ["KS", "METHODS", "faithfulness", "aopc_picture"]

KS = (1, 2, 3, 4, 5, 7, 10)
METHODS = ("attention", "grad_x_input", "random")
_SPECIAL_IDS = (0, 101, 102)  # [PAD], [CLS], [SEP]: never deleted


class _Full:
    """The run's whole model from WordPiece ids: log P(class) ``(B, 2)``, the attention weights
    ``(B, T)`` and (with ``grad``) gradient x input per token ``(B, T)``."""

    def __init__(self, lr: LoadedRun):
        kind = input_kind(lr.kind)
        if kind not in ("states", "mid", "ids") or lr.data != "sentences":
            raise AttnKitError(f"the faithfulness test runs on sentence models with token attention; got "
                               f"{lr.kind!r} on {lr.data}")
        self.lr, self.kind = lr, kind
        self.bert = None if kind == "ids" else lr.minilm()[0].bert
        self.embedding = lr.model.emb if kind == "ids" else self.bert.embeddings.word
        for p in list(lr.model.parameters()) + (list(self.bert.parameters()) if self.bert is not None else []):
            p.requires_grad_(False)

    def __call__(self, ids: Sequence[Tensor], grad: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        x, mask = _pad_rows([i.long() for i in ids])
        captured: list[Tensor] = []

        def keep(_m, _i, out: Tensor) -> Tensor:
            if grad:  # a leaf, so its gradient is kept (every parameter is frozen)
                out = out.detach().requires_grad_(True)
            captured.append(out)
            return out

        hook = self.embedding.register_forward_hook(keep)
        try:
            with torch.enable_grad() if grad else torch.no_grad():
                if self.kind == "ids":
                    logits, w = self.lr.model({"ids": x, "mask": mask})
                else:
                    out = self.bert(x, mask.long(), output_hidden_states=self.kind == "mid")
                    if self.kind == "mid":
                        layer = self.lr.model.config.mid_layer  # the input of the fine-tuned top layers
                        batch = {"mid": out.hidden_states[layer], "mask": mask, "mid_layer": torch.tensor(layer)}
                    else:
                        batch = {"states": out.last_hidden_state, "mask": mask}
                    logits, w = self.lr.model(batch)
                logp = torch.log_softmax(logits, -1)
                gxi = None
                if grad:
                    chosen = logp.gather(1, logp.argmax(1, keepdim=True)).sum()
                    chosen.backward()
                    e = captured[0]
                    gxi = (e.grad * e).sum(-1).detach()  # (B, T)
        finally:
            hook.remove()
        return logp.detach(), w.detach(), gxi


def _delete(ids: Tensor, positions: Sequence[int]) -> Tensor:
    drop = set(int(p) for p in positions)
    return torch.tensor([int(t) for j, t in enumerate(ids) if j not in drop], dtype=ids.dtype)


def faithfulness(lr: LoadedRun, *, n: int = 100, ks: Sequence[int] = KS, seed: int = 0, batch: int = 25,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The deletion curves of ``n`` held-out sentences of the run's test fold (see the module docstring)."""
    lr.model.eval()
    full = _Full(lr)
    examples = load("sentences")
    test = fold_split(examples, lr.config["fold"])[2][:n]
    from .features import token_ids

    ids_all = token_ids(lr.minilm()[1], [examples[i].text for i in test], MAX_TOKENS["sentences"])
    rng = random.Random(seed)
    drops: dict[str, dict[int, list[float]]] = {m: {k: [] for k in ks} for m in METHODS}
    for s in range(0, len(test), batch):
        ids = ids_all[s:s + batch]
        logp, w, gxi = full(ids, grad=True)
        pred = logp.argmax(1)
        p0 = logp.gather(1, pred[:, None])[:, 0].exp()
        variants, owners = [], []
        for b, row in enumerate(ids):
            real = [j for j, t in enumerate(row.tolist()) if t not in _SPECIAL_IDS]
            rankings = {"attention": sorted(real, key=lambda j: -float(w[b, j])),
                        "grad_x_input": sorted(real, key=lambda j: -float(gxi[b, j])),
                        "random": rng.sample(real, len(real))}
            for m, order in rankings.items():
                for k in ks:
                    variants.append(_delete(row, order[:k]) if len(order) > k else _delete(row, order[:-1] or []))
                    owners.append((b, m, k))
        probs = []
        for v in range(0, len(variants), 64):
            lp, _, _ = full(variants[v:v + 64])
            probs.append(lp)
        lp = torch.cat(probs)
        for (b, m, k), row in zip(owners, lp):
            drops[m][k].append(float(p0[b] - row[pred[b]].exp()))
        log(f"faithfulness: {min(s + batch, len(test))}/{len(test)} sentences")
    curves = {m: {str(k): statistics.fmean(v[k]) for k in ks} for m, v in drops.items()}
    return {"run": str(lr.run.path), "model": lr.kind, "fold": lr.config["fold"], "n": len(test), "ks": list(ks),
            "curves": curves, "aopc": {m: statistics.fmean(c.values()) for m, c in curves.items()},
            "note": "k tokens deleted (at most all but one real token), drop in the predicted class's probability"}


def aopc_picture(result: dict[str, Any], path: str | Path) -> Path:
    """The three deletion curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ks = result["ks"]
    for m, style in zip(METHODS, ("o-", "s-", "^--")):
        ax.plot(ks, [result["curves"][m][str(k)] for k in ks], style,
                label=f"{m.replace('_', ' ')} (AOPC {result['aopc'][m]:.3f})")
    ax.set_xlabel("k tokens deleted")
    ax.set_ylabel("drop in P(predicted class)")
    ax.set_title(f"deletion test, {result['model']}, {result['n']} held-out sentences", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m attnkit.apps.sentiment.faithfulness",
                                 description="deletion test of a sentiment run's attention")
    ap.add_argument("run")
    ap.add_argument("-n", type=int, default=100, help="held-out sentences (default 100)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lr = load_run(a.run)
    res = faithfulness(lr, n=a.n)
    write_json(lr.run / "faithfulness.json", res)
    aopc_picture(res, lr.run / "faithfulness.png")
    print("AOPC: " + ", ".join(f"{m} {v:.4f}" for m, v in res["aopc"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
