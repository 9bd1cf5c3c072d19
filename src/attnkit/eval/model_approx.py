"""What approximate attention costs on a real model.

Every variant below runs all-MiniLM-L6-v2 with one approximation in every layer (a sparse
pattern via ``impl="block_sparse"``, Reformer LSH, kernel/linear attention) and is compared with
the exact model on the built-in paraphrase pairs (:mod:`attnkit.models._pairs`):

* ``cos vs exact``: cosine between each sentence's approximate and exact embedding (mean, min);
* ``top-1``: for each first sentence of a pair, is its paraphrase the nearest of all second
  sentences (retrieval accuracy);
* ``AUC``: probability that a paraphrase pair scores higher than a non-paraphrase pair;
* ``para`` / ``other``: mean cosine of paraphrase pairs / of mismatched pairs;
* ``rank corr``: Spearman correlation of all ``N x N`` pair similarities with the exact ones
  (the most sensitive check: does the approximation keep the *order* of similarities).

``attnkit compare --model minilm`` prints the table; implementations not registered in this
installation are listed as skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import masks
from ..errors import UnknownNameError
from ..masks import Mask
from ..registry import list_impls

__all__ = ["Variant", "VARIANTS", "pair_metrics", "spearman", "compare_variants", "format_table",
           "run_model_comparison"]


@dataclass(frozen=True)
class Variant:
    """One way of running attention: ``impl`` with an extra ``mask`` pattern and ``options``."""

    name: str
    family: str
    impl: str
    mask: Callable[[], Mask] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def _window(w: int) -> Mask:
    return masks.window(w, w)


def _longformer(w: int) -> Mask:
    return masks.window(w, w) | masks.global_tokens([0])


def _dilated(w: int, d: int) -> Mask:
    return masks.dilated(w, d) | masks.global_tokens([0])


def _random(density: float) -> Mask:
    return masks.random(density, seed=0) | masks.window(1, 1) | masks.global_tokens([0])


_SPARSE_OPTS = {"block": 8}  # small tiles: sentences are short

VARIANTS: tuple[Variant, ...] = (
    Variant("exact (sdpa)", "exact", "sdpa"),
    Variant("exact (blockwise)", "exact", "blockwise"),
    Variant("window ±2", "sparse", "block_sparse", lambda: _window(2), _SPARSE_OPTS),
    Variant("window ±4", "sparse", "block_sparse", lambda: _window(4), _SPARSE_OPTS),
    Variant("window ±8", "sparse", "block_sparse", lambda: _window(8), _SPARSE_OPTS),
    Variant("window ±2 + [CLS] global", "sparse", "block_sparse", lambda: _longformer(2), _SPARSE_OPTS),
    Variant("window ±4 + [CLS] global", "sparse", "block_sparse", lambda: _longformer(4), _SPARSE_OPTS),
    Variant("dilated 4x2 + [CLS] global", "sparse", "block_sparse", lambda: _dilated(4, 2), _SPARSE_OPTS),
    Variant("random 30% + ±1 + [CLS]", "sparse", "block_sparse", lambda: _random(0.3), _SPARSE_OPTS),
    Variant("lsh bucket 4, 1 hash", "lsh", "lsh", None, {"bucket_size": 4, "n_hashes": 1}),
    Variant("lsh bucket 4, 4 hashes", "lsh", "lsh", None, {"bucket_size": 4, "n_hashes": 4}),
    Variant("lsh bucket 8, 2 hashes", "lsh", "lsh", None, {"bucket_size": 8, "n_hashes": 2}),
    Variant("lsh bucket 8, 8 hashes", "lsh", "lsh", None, {"bucket_size": 8, "n_hashes": 8}),
    Variant("linear elu+1", "linear", "linear", None, {"feature_map": "elu"}),
    Variant("linear FAVOR+ 64 features", "linear", "linear", None, {"feature_map": "favor", "n_features": 64}),
    Variant("linear FAVOR+ 256 features", "linear", "linear", None, {"feature_map": "favor", "n_features": 256}),
    Variant("linear FAVOR+ 1024 features", "linear", "linear", None,
            {"feature_map": "favor", "n_features": 1024}),
)


def _auc(pos: Tensor, neg: Tensor) -> float:
    """P(a positive scores above a negative), ties counting half."""
    diff = pos.view(-1, 1) - neg.view(1, -1)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def _ranks(x: Tensor) -> Tensor:
    return x.argsort().argsort().double()


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two flat tensors (no tie correction)."""
    rx, ry = _ranks(x.flatten()), _ranks(y.flatten())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-12))


def pair_metrics(emb_a: Tensor, emb_b: Tensor) -> dict[str, float]:
    """Downstream checks on normalised embeddings of pairs ``(N, C)``: retrieval top-1, AUC and
    mean cosines of matched / mismatched pairs."""
    sim = emb_a @ emb_b.T  # (N, N): row i, column j = cos(a_i, b_j)
    n = sim.shape[0]
    pos = sim.diagonal()
    neg = sim[~torch.eye(n, dtype=torch.bool)]
    return {
        "top1": float((sim.argmax(1) == torch.arange(n)).double().mean()),
        "auc": _auc(pos, neg),
        "para": float(pos.mean()),
        "other": float(neg.mean()),
    }


def _encode(model: Any, sentences: Sequence[str], v: Variant) -> Tensor:
    return model.encode(list(sentences), batch_size=64, impl=v.impl, mask=v.mask() if v.mask else None,
                        options=dict(v.options) or None, progress=False)


def compare_variants(model: Any, pairs: Sequence[tuple[str, str]], variants: Sequence[Variant] = VARIANTS,
                     *, exact_impl: str = "reference", progress: bool = True) -> list[dict[str, Any]]:
    """One row per variant: its metrics against the exact model (computed with ``exact_impl``),
    or ``status: "skipped: ..."`` when its implementation is not registered here."""
    from tqdm.auto import tqdm

    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    sentences = firsts + seconds
    exact = _encode(model, sentences, Variant("exact", "exact", exact_impl))  # (2N, C)
    n = len(pairs)
    rows: list[dict[str, Any]] = [{"variant": f"exact ({exact_impl}, oracle)", "family": "exact",
                                   "impl": exact_impl, "status": "ok", "cos_mean": 1.0, "cos_min": 1.0,
                                   **pair_metrics(exact[:n], exact[n:]), "rank_corr": 1.0}]
    registered = set(list_impls())
    for v in tqdm(variants, desc="approximations", unit="variant", disable=not progress):
        row = {"variant": v.name, "family": v.family, "impl": v.impl, "options": dict(v.options)}
        if v.impl not in registered:
            rows.append({**row, "status": f"skipped: impl {v.impl!r} not registered"})
            continue
        emb = _encode(model, sentences, v)  # (2N, C)
        cos = (emb * exact).sum(-1)  # (2N,) both are unit vectors
        rows.append({**row, "status": "ok", "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                     **pair_metrics(emb[:n], emb[n:]),
                     "rank_corr": spearman(emb[:n] @ emb[n:].T, exact[:n] @ exact[n:].T)})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`compare_variants` as a Markdown table."""
    head = ["variant", "impl", "cos vs exact (mean)", "cos vs exact (min)", "top-1", "AUC", "rank corr", "para",
            "other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['impl']} | {r['status']} | | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['impl']} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | "
                     f"{r['top1']:.3f} | {r['auc']:.3f} | {r['rank_corr']:.3f} | {r['para']:.3f} | {r['other']:.3f} |")
    return "\n".join(lines)


MODELS = ("minilm",)


def run_model_comparison(model: str = "minilm", json_path: str | None = None) -> str:
    """Run every approximation on the real ``model`` over the built-in paraphrase pairs and return
    the Markdown table (also written as JSON to ``json_path`` when given)."""
    if model not in MODELS:
        raise UnknownNameError(f"unknown model {model!r}; valid model names: {', '.join(MODELS)}")
    from ..models._pairs import PARAPHRASE_PAIRS
    from ..models.bert import load_minilm

    encoder, _ = load_minilm()
    rows = compare_variants(encoder, PARAPHRASE_PAIRS)
    table = format_table(rows)
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "pairs": len(PARAPHRASE_PAIRS), "rows": rows},
                                   indent=2))
    n = len(PARAPHRASE_PAIRS)
    return (f"all-MiniLM-L6-v2, {n} paraphrase pairs ({2 * n} sentences); every layer runs the variant; "
            f"exact = impl 'reference'\n\n{table}")
