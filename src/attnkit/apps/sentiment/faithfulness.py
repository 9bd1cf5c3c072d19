"""Is the attention faithful? A deletion test in the manner of Jain & Wallace (2019) and the
AOPC of DeYoung et al. (2020).

For each held-out sentence the model predicts a class with probability ``p``. Its (non-special)
WordPiece tokens are ranked three ways: by the attention-pooling weight, by gradient x input
(the gradient of the predicted class's log-probability with respect to the input word
embeddings, dotted with them) and at random. Deleting the ``k`` top-ranked tokens from the input
and running the whole model again gives ``p_k``; the curve is the mean drop ``p - p_k`` for each
``k``, and AOPC is its mean over ``k``. A ranking that finds what the model relies on drops
the probability more than a random one.

The review models (``han``, ``han-lex``) attend at two levels; they are tested at the level of
sentences, which is what their review vector attends over. The sentences of a held-out review
are ranked by the model's own sentence-attention weights, by gradient x input (the gradient of
the predicted class's log-probability with respect to the input token states, dotted with them
and summed over each sentence's tokens) and at random; deleting the ``k`` top-ranked sentences
removes their states from the model's input. Each sentence was encoded by MiniLM on its own, so
the other sentences' states are exactly those of the shortened review. For ``han-lex`` the
deleted sentences also leave the text its lexical score is computed from (``lexical="recompute"``,
the default); ``lexical="keep"`` keeps the full review's score, so that only the attention
model's input changes.

``python -m attnkit.apps.sentiment.faithfulness RUN`` writes ``faithfulness.json`` and
``faithfulness.png`` into the run folder (``--lexical keep``: ``faithfulness-keep-lex.*``).
"""

from __future__ import annotations

import random
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import write_json
from .batches import pad_rows, review_batch
from .data import fold_split, load, split_sentences
from .features import MAX_TOKENS
from .loaded import LoadedRun, load_run
from .models import input_kind

__all__ = ["KS", "METHODS", "LEXICAL_MODES", "faithfulness", "review_deletion", "text_without", "aopc_picture"]

KS = (1, 2, 3, 4, 5, 7, 10)
METHODS = ("attention", "grad_x_input", "random")
LEXICAL_MODES = ("recompute", "keep")  # han-lex: the lexical score of the shortened text, or of the full one
_SPECIAL_IDS = (0, 101, 102)  # [PAD], [CLS], [SEP]: never deleted


class _Full:
    """The run's whole model from WordPiece ids: log P(class) ``(B, 2)``, the attention weights
    ``(B, T)`` and (with ``grad``) gradient x input per token ``(B, T)``."""

    def __init__(self, lr: LoadedRun):
        kind = input_kind(lr.kind)
        if kind not in ("states", "mid", "ids") or lr.data != "sentences":
            raise AttnKitError(f"the faithfulness test runs on sentence models with token attention; got "
                               f"{lr.kind!r} on {lr.data}")
        if lr.lexical is not None:  # deleted WordPieces have no counterpart in the NB-SVM's word n-grams
            raise AttnKitError(f"the token deletion test does not run on {lr.kind!r}, whose score also reads the "
                               "NB-SVM of the text; expected a sentence model without a lexical score")
        self.lr, self.kind = lr, kind
        self.bert = None if kind == "ids" else lr.minilm()[0].bert
        self.embedding = lr.model.emb if kind == "ids" else self.bert.embeddings.word
        for p in list(lr.model.parameters()) + (list(self.bert.parameters()) if self.bert is not None else []):
            p.requires_grad_(False)

    def __call__(self, ids: Sequence[Tensor], grad: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        x, mask = pad_rows([i.long() for i in ids])
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
                 lexical: str = "recompute", log: Callable[[str], None] = print) -> dict[str, Any]:
    """The deletion curves of ``n`` held-out texts of the run's test fold (see the module docstring):
    tokens of sentences for the sentence models, sentences of reviews for ``han`` and ``han-lex``."""
    if lexical not in LEXICAL_MODES:
        raise AttnKitError(f"lexical must be one of {list(LEXICAL_MODES)}; got {lexical!r}")
    if input_kind(lr.kind) == "review" and lr.kind != "sent-mean-lr":
        return _review_faithfulness(lr, n=n, ks=ks, seed=seed, lexical=lexical, log=log)
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
            "unit": "tokens", "texts": "sentences",
            "curves": curves, "aopc": {m: statistics.fmean(c.values()) for m, c in curves.items()},
            "note": "k tokens deleted (at most all but one real token), drop in the predicted class's probability"}


# ----------------------------------------------------------------------------------------------
# reviews: deleting sentences
# ----------------------------------------------------------------------------------------------


def _review_pass(model: torch.nn.Module, reviews: Sequence[Sequence[Tensor]], lex: Tensor | None,
                 grad: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """``model`` on reviews given as their sentences' token states ``(T_j, C)``: log P(class)
    ``(B, 2)``, the sentence weights ``(B, S)`` and (``grad``) gradient x input per sentence ``(B, S)``."""
    batch = review_batch(reviews)
    if lex is not None:
        batch["lex"] = lex
    if not grad:
        with torch.no_grad():
            logits, (_, sw) = model(batch)
        return torch.log_softmax(logits, -1), sw, None
    states = batch["states"].requires_grad_(True)  # a leaf: the input of the whole model
    with torch.enable_grad():
        logits, (_, sw) = model(batch)
        logp = torch.log_softmax(logits, -1)
        logp.gather(1, logp.argmax(1, keepdim=True)).sum().backward()
    gxi = (states.grad * states).sum(-1).sum(-1)  # (B, S): summed over each sentence's tokens (padding is 0)
    return logp.detach(), sw.detach(), gxi.detach()


def review_deletion(model: torch.nn.Module, reviews: Sequence[Sequence[Tensor]], *, ks: Sequence[int] = KS,
                    seed: int = 0, lex: Callable[[int, Sequence[int]], float] | None = None, batch: int = 16,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Deletion curves of a review model (``han``, ``han-lex``: ``model(batch) -> (logits, (word
    weights, sentence weights (B, S)))``) over ``reviews``, each a list of its sentences' token
    states ``(T_j, C)``. For each review and each ranking of its sentences (``METHODS``), the
    ``k`` top-ranked sentences are deleted (at most all but one) and the model runs again; the
    curve is the mean drop in the probability of the class predicted on the whole review.
    ``lex(review, deleted)`` (``han-lex``) gives the lexical score of review number ``review``
    with the sentences ``deleted`` removed (``deleted`` empty: the whole review)."""
    if not reviews or any(len(r) == 0 for r in reviews):
        raise AttnKitError(f"reviews must be a non-empty list of reviews with at least one sentence each; got "
                           f"{len(reviews)} reviews, {sum(len(r) == 0 for r in reviews)} of them empty")
    if any(not isinstance(k, int) or k < 1 for k in ks):
        raise AttnKitError(f"ks must be positive ints; got {list(ks)}")
    model.eval()
    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    rng = random.Random(seed)
    drops: dict[str, dict[int, list[float]]] = {m: {k: [] for k in ks} for m in METHODS}
    shown: list[dict[str, Any]] = []
    try:
        for s in range(0, len(reviews), batch):
            chunk = list(range(s, min(s + batch, len(reviews))))
            full_lex = None if lex is None else torch.tensor([lex(i, ()) for i in chunk], dtype=torch.float32)
            logp, sw, gxi = _review_pass(model, [reviews[i] for i in chunk], full_lex, grad=True)
            pred = logp.argmax(1)
            p0 = logp.gather(1, pred[:, None])[:, 0].exp()
            assert gxi is not None
            variants: list[tuple[int, str, int, list[int]]] = []
            for b, i in enumerate(chunk):
                real = list(range(len(reviews[i])))
                rankings = {"attention": sorted(real, key=lambda j: -float(sw[b, j])),
                            "grad_x_input": sorted(real, key=lambda j: -float(gxi[b, j])),
                            "random": rng.sample(real, len(real))}
                if len(shown) < 3:
                    shown.append({"review": i, "sentences": len(real), "predicted": int(pred[b]),
                                  "p": float(p0[b]), "attention_top": rankings["attention"][:3],
                                  "sentence_weights_top": [float(sw[b, j]) for j in rankings["attention"][:3]]})
                for m, order in rankings.items():
                    for k in ks:
                        variants.append((b, m, k, sorted(order[:min(k, len(real) - 1)])))
            for v in range(0, len(variants), batch):
                part = variants[v:v + batch]
                kept = [[x for j, x in enumerate(reviews[chunk[b]]) if j not in set(gone)] for b, _, _, gone in part]
                vlex = None if lex is None else torch.tensor([lex(chunk[b], gone) for b, _, _, gone in part],
                                                            dtype=torch.float32)
                lp, _, _ = _review_pass(model, kept, vlex)
                for (b, m, k, _), row in zip(part, lp):
                    drops[m][k].append(float(p0[b] - row[pred[b]].exp()))
            log(f"faithfulness: {chunk[-1] + 1}/{len(reviews)} reviews")
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    curves = {m: {str(k): statistics.fmean(v[k]) for k in ks} for m, v in drops.items()}
    return {"n": len(reviews), "ks": list(ks), "unit": "sentences", "texts": "reviews", "curves": curves,
            "aopc": {m: statistics.fmean(c.values()) for m, c in curves.items()},
            "sentences_median": statistics.median(len(r) for r in reviews), "examples": shown,
            "note": "k sentences deleted (at most all but one), drop in the predicted class's probability"}


def text_without(sentences: Sequence[str], deleted: Sequence[int], max_sentences: int) -> str:
    """The review of ``sentences`` (all of them, one a line) without the model's sentences ``deleted``:
    indices among the at most ``max_sentences`` the model reads (a longer review: its first
    ``max_sentences - max_sentences // 2`` and its last ``max_sentences // 2``)."""
    total, head = len(sentences), max_sentences - max_sentences // 2
    shown = min(total, max_sentences)
    bad = [j for j in deleted if not 0 <= j < shown]
    if bad:
        raise AttnKitError(f"deleted sentences {bad} are outside the {shown} sentences the model reads")
    gone = {j if total <= max_sentences or j < head else total - (max_sentences - j) for j in deleted}
    return "\n".join(x for q, x in enumerate(sentences) if q not in gone)


def _review_faithfulness(lr: LoadedRun, *, n: int, ks: Sequence[int], seed: int, lexical: str,
                         log: Callable[[str], None]) -> dict[str, Any]:
    from .features import MAX_SENTENCES, features

    examples = load(lr.data)
    test = fold_split(examples, lr.config["fold"])[2][:n]
    feats = features(lr.data, log=log, encoder=lr.encoder)
    reviews = [[feats.states[feats.tokens(u)] for u in feats.units(t)] for t in test]
    score = None
    if lr.lexical is not None:
        texts = [examples[t].text for t in test]
        parts = [split_sentences(t) for t in texts]  # every sentence; the model reads at most MAX_SENTENCES
        for i, r in enumerate(reviews):
            if len(r) != min(len(parts[i]), MAX_SENTENCES):
                raise AttnKitError(f"review {test[i]} has {len(r)} cached sentences and {len(parts[i])} in its text; "
                                   "expected the same cut (re-encode the features)")

        def score(i: int, deleted: Sequence[int]) -> float:
            if lexical == "keep" or not deleted:
                return float(lr.lex_scores([texts[i]])[0])
            return float(lr.lex_scores([text_without(parts[i], deleted, MAX_SENTENCES)])[0])

    res = review_deletion(lr.model, reviews, ks=ks, seed=seed, lex=score, log=log)
    return {"run": str(lr.run.path), "model": lr.kind, "encoder": lr.encoder, "fold": lr.config["fold"],
            **({"lexical": lexical} if lr.lexical is not None else {}), **res}


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
    unit, texts = result.get("unit", "tokens"), result.get("texts", "sentences")
    ax.set_xlabel(f"k {unit} deleted")
    ax.set_ylabel("drop in P(predicted class)")
    what = result["model"] + (f" ({result['encoder']})" if result.get("encoder", "minilm") != "minilm" else "")
    what += {"recompute": ", NB-SVM score recomputed", "keep": ", NB-SVM score kept"}.get(result.get("lexical"), "")
    ax.set_title(f"deletion test, {what}, {result['n']} held-out {texts}", fontsize=9)
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
    ap.add_argument("-n", type=int, default=100, help="held-out texts (default 100)")
    ap.add_argument("--lexical", choices=LEXICAL_MODES, default="recompute",
                    help="han-lex: the NB-SVM score of the shortened review (default) or of the full one (keep)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        lr = load_run(a.run)
        res = faithfulness(lr, n=a.n, lexical=a.lexical)
    except AttnKitError as e:  # a command-line mistake: one error line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = "faithfulness" + ("-keep-lex" if res.get("lexical") == "keep" else "")
    write_json(lr.run / f"{name}.json", res)
    aopc_picture(res, lr.run / f"{name}.png")
    print("AOPC: " + ", ".join(f"{m} {v:.4f}" for m, v in res["aopc"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
