"""Compare mode: an approximate attention beside exact attention on all-MiniLM-L6-v2.

Every layer runs the chosen approximation: a sparse pattern of :mod:`attnkit.masks.patterns`
(sliding window, Longformer, BigBird) on ``impl="block_sparse"``, Reformer LSH (``impl="lsh"``) or
kernel attention (``impl="linear"``), as :mod:`attnkit.eval.model_approx` runs them. Views:
``exact``, ``approx`` and ``error`` (``|approx - exact|``). Info: per-head weight errors, the
cosine between the exact and approximate sentence embeddings and, for a pair, how the pair's
similarity moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..api import Analysis, RequestError, View
from ._base import Input, Mode, text_input
from ._minilm import MAX_TOKENS, MODEL_LOCK, encode, minilm, run_minilm
from .text import truncation_notice

__all__ = ["CompareMode", "MODE", "METHODS", "variant_of"]

METHODS = ("window", "longformer", "bigbird", "lsh", "linear")
SPARSE = ("window", "longformer", "bigbird")
FEATURE_MAPS = ("elu", "favor")


def variant_of(inputs: Mapping[str, Any]) -> tuple[str, Any, dict[str, Any], str]:
    """``(impl, mask, options, label)`` of the approximation the inputs describe."""
    from ...masks import patterns

    method = inputs["method"]
    if method in SPARSE:
        block = inputs["block"]
        if method == "window":
            mask, label = patterns.sliding_window(inputs["window"]), f"sliding window ±{inputs['window']}"
        elif method == "longformer":
            mask = patterns.longformer(inputs["window"], (0,))
            label = f"Longformer: window ±{inputs['window']} + [CLS] global"
        else:
            mask = patterns.bigbird(block, window_blocks=3, global_blocks=inputs["global_blocks"],
                                    random_blocks=inputs["random_blocks"], seed=0)
            label = (f"BigBird: blocks of {block}, 3 window + {inputs['global_blocks']} global + "
                     f"{inputs['random_blocks']} random blocks")
        return "block_sparse", mask, {"block": block}, label
    if method == "lsh":
        return ("lsh", None, {"bucket_size": inputs["bucket_size"], "n_hashes": inputs["n_hashes"]},
                f"LSH: buckets of {inputs['bucket_size']}, {inputs['n_hashes']} hash rounds")
    opts: dict[str, Any] = {"feature_map": inputs["feature_map"]}
    if inputs["feature_map"] == "favor":
        opts["n_features"] = inputs["n_features"]
    return "linear", None, opts, ("linear: elu+1" if inputs["feature_map"] == "elu"
                                  else f"linear: FAVOR+ with {inputs['n_features']} features")


def head_errors(exact: torch.Tensor, approx: torch.Tensor) -> dict[str, Any]:
    """Per-head errors of ``approx`` against ``exact`` (both ``(L, H, T, T)``) as a page table:
    largest absolute difference, mean absolute difference, and total variation (half the L1
    distance of each row, averaged over rows: 0 = same, 1 = disjoint)."""
    diff = (approx.double() - exact.double()).abs()  # (L, H, T, T)
    max_abs, mean_abs = diff.amax((-2, -1)), diff.mean((-2, -1))
    tv = 0.5 * diff.sum(-1).mean(-1)  # (L, H)
    n_layers, n_heads = tv.shape
    rows = [[ell, h, round(float(max_abs[ell, h]), 5), round(float(mean_abs[ell, h]), 6), round(float(tv[ell, h]), 5)]
            for ell in range(n_layers) for h in range(n_heads)]
    return {"id": "errors", "title": "weight error per head (approximate vs exact; click a row to show the head)",
            "columns": ["layer", "head", "max |diff|", "mean |diff|", "total variation"], "rows": rows,
            "select_head": True,
            "summary": {"max_abs": float(max_abs.max()), "mean_abs": float(diff.mean()), "tv": float(tv.mean())}}


class CompareMode(Mode):
    name = "compare"
    title = "Compare implementations"
    order = 20
    help = ("Choose an approximation; every layer of all-MiniLM-L6-v2 runs it. See its weights beside the exact "
            "ones, the error of each head and what it costs the sentence embedding.")

    @property
    def inputs(self):
        return [
            text_input("text", "sentence", placeholder="The cat sat on the mat because it was tired."),
            text_input("text_b", "second sentence (optional)", required=False),
            Input("method", "approximation", "select", default="window", choices=METHODS),
            Input("window", "window (tokens each side)", "int", default=2, low=0, high=MAX_TOKENS,
                  when={"method": ["window", "longformer"]}),
            Input("block", "block size", "int", default=8, low=1, high=128,
                  when={"method": list(SPARSE)}),
            Input("global_blocks", "global blocks", "int", default=1, low=0, high=16, when={"method": ["bigbird"]}),
            Input("random_blocks", "random blocks", "int", default=1, low=0, high=16, when={"method": ["bigbird"]}),
            Input("bucket_size", "bucket size", "int", default=4, low=1, high=256, when={"method": ["lsh"]}),
            Input("n_hashes", "hash rounds", "int", default=2, low=1, high=16, when={"method": ["lsh"]}),
            Input("feature_map", "feature map", "select", default="favor", choices=FEATURE_MAPS,
                  when={"method": ["linear"]}),
            Input("n_features", "random features", "int", default=256, low=1, high=4096,
                  when={"method": ["linear"]}),
        ]

    def warm(self) -> None:
        minilm()

    def analyse(self, inputs: Mapping[str, Any], key: str) -> Analysis:
        from ...errors import AttnKitError

        impl, mask, options, label = variant_of(inputs)
        enc = encode(inputs["text"], inputs.get("text_b"))
        exact, emb_exact = run_minilm(enc)
        try:
            approx, emb_approx = run_minilm(enc, impl=impl, mask=mask, options=options)
        except AttnKitError as exc:
            raise RequestError(f"{label} cannot run on this input: {exc}") from None
        toks = enc.tokens
        views = {"exact": View("exact", exact, toks, toks), "approx": View(label, approx, toks, toks),
                 "error": View("|approx - exact|", (approx - exact).abs(), toks, toks)}
        errors = head_errors(exact, approx)
        numbers = {"approximation": label, "impl": impl,
                   "embedding cosine (approx vs exact)": round(float(emb_exact @ emb_approx), 6),
                   "largest weight error": round(errors["summary"]["max_abs"], 5),
                   "mean total variation": round(errors["summary"]["tv"], 5)}
        if mask is not None:
            from ...masks import patterns

            numbers["pattern density (kept pairs)"] = round(patterns.density(mask, len(toks)), 4)
        if inputs.get("text_b"):
            model, _ = minilm()
            pair = [inputs["text"], inputs["text_b"]]
            with MODEL_LOCK:
                e = model.encode(pair, progress=False)  # (2, C)
                a = model.encode(pair, progress=False, impl=impl, mask=mask, options=options)  # (2, C)
            numbers["pair similarity, exact"] = round(float(e[0] @ e[1]), 5)
            numbers["pair similarity, approx"] = round(float(a[0] @ a[1]), 5)
        info = {"tokens": toks, "notices": truncation_notice(enc), "numbers": numbers, "tables": [errors],
                "side_by_side": ["exact", "approx", "error"]}
        return Analysis(key, self.name, views, info)


MODE = CompareMode
