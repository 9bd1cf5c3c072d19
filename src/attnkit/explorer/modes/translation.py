"""Language mode for a trained translation run (``attnkit serve --run translation=PATH``).

The run's model translates the text (greedy decoding); the generated tokens are then fed back
under teacher forcing to read the attention behind each of them. Views: ``cross`` (the
cross-attention alignment, from the model's ``alignments``: rows are generated tokens, columns
source tokens), and for transformers ``decoder`` (the decoder's causal self-attention: row ``t``
is what generated token ``t`` looked at among the earlier ones) and ``encoder``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..api import Analysis, RequestError, View
from ._base import Mode, text_input

__all__ = ["TranslationMode", "MODE"]


class TranslationMode(Mode):
    name = "translation"
    title = "Translation"
    order = 30
    app = "translation"
    help = ("Type a sentence in the run's source language. Rows are the generated tokens: the cross-attention "
            "shows which source tokens each one drew on, the decoder view what it looked at among its own "
            "earlier tokens.")

    def __init__(self, run: str | Path | None = None):
        super().__init__(run)
        if run is None:
            raise RequestError("the translation mode needs a run folder: attnkit serve --run translation=PATH")
        from ...apps.translation import load_run

        self.loaded = load_run(run)
        self.lock = threading.Lock()

    @property
    def inputs(self):
        return [text_input("text", "source text", placeholder="three hundred twenty-one")]

    def extra_description(self) -> dict[str, Any]:
        cfg = self.loaded.config
        return {"run": str(self.run), "model": cfg["model"]["kind"], "source": "en", "target": cfg.get("lang")}

    def analyse(self, inputs: Mapping[str, Any], key: str) -> Analysis:
        from ...apps.translation import greedy
        from ...apps.translation.tokenizer import BOS, EOS, PAD
        from ...interpret import capture_attention

        model, tok = self.loaded.model, self.loaded.tokenizer
        limit = model.config.max_len - 1
        src_ids = tok.encode(inputs["text"])
        notices = []
        if len(src_ids) + 1 > limit:
            notices.append(f"The text was longer than the model's {limit} tokens and was truncated.")
            src_ids = src_ids[: limit - 1]
        src_ids = [*src_ids, EOS]
        src = torch.tensor([src_ids])  # (1, S)
        with self.lock, torch.inference_mode():
            out = greedy(model, src, src != PAD, min(limit, 2 * len(src_ids) + 10))[0].tolist()
            out = [i for i in out if i != PAD] or [EOS]
            tgt_in = torch.tensor([[BOS, *out[:-1]]])  # BOS then the generated tokens, (1, T)
            with capture_attention(model) as cap:
                cross = model.alignments(src, src != PAD, tgt_in)  # (L, H, 1, T, S) or None
        src_toks, tgt_toks = tok.tokens(src_ids), tok.tokens(out)
        views: dict[str, View] = {}
        if cross is not None:
            views["cross"] = View("cross-attention (generated x source)", cross[:, :, 0].float(), tgt_toks, src_toks)
        for part, rows, cols, title in (("decoder", tgt_toks, tgt_toks, "decoder self-attention (generated tokens)"),
                                        ("encoder", src_toks, src_toks, "encoder self-attention")):
            recs = [r.weights[0] for r in cap.records
                    if (r.module or "").startswith(f"{part}.") and (r.module or "").endswith("self_attn")]
            if recs and all(w.shape[-2:] == (len(rows), len(cols)) for w in recs):
                views[part] = View(title, torch.stack(recs).float(), rows, cols)
        if not views:
            raise RequestError(f"the {model.config.kind} model has no attention to show")
        info = {"tokens": src_toks, "notices": notices,
                "numbers": {"translation": tok.decode(out), "model": model.config.kind,
                            "generated tokens": len(out)}}
        return Analysis(key, self.name, views, info)


MODE = TranslationMode
