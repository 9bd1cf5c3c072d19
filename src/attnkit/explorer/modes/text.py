"""Text mode: all-MiniLM-L6-v2 on one sentence or a pair.

Views: ``attention`` (every layer and head), ``rollout`` (:func:`attnkit.interpret.attention_rollout`)
and, on request for short inputs, ``flow`` (:func:`attnkit.interpret.attention_flow`, which costs
``T^2`` max-flow problems). Info: a notice when the input was truncated. The head statistics of
:func:`attnkit.interpret.head_stats` come as a table from the ``stats`` action, which the page asks
for once the first heatmap is drawn (``info["later"]``): at 512 tokens they cost as much as the
model's forward pass, and the first picture does not wait for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import Analysis, RequestError, View
from ._base import Mode, text_input
from ._minilm import MAX_TOKENS, Encoded, encode, minilm, run_minilm

__all__ = ["TextMode", "MODE", "FLOW_MAX_TOKENS", "stats_table", "truncation_notice"]

FLOW_MAX_TOKENS = 16  # attention flow solves T^2 max-flow problems in Python: seconds at 16 tokens


def truncation_notice(enc: Encoded) -> list[str]:
    if not enc.truncated:
        return []
    return [f"The input was longer than the model's {MAX_TOKENS} tokens and was truncated to {len(enc.tokens)} "
            "tokens."]


def stats_table(att: Any, tokens: list[str]) -> dict[str, Any]:
    """The head statistics of ``att (L, H, T, T)`` as a table for the page (one row per head)."""
    from ...interpret import head_stats
    from ...interpret.stats import STAT_NAMES

    st = head_stats(att, tokens)
    n_layers, n_heads = st.entropy.shape
    rows = [[ell, h, *(round(float(getattr(st, s)[ell, h]), 4) for s in STAT_NAMES)]
            for ell in range(n_layers) for h in range(n_heads)]
    return {"id": "stats", "title": "head statistics (mean over query tokens; click a row to show the head)",
            "columns": ["layer", "head", *STAT_NAMES], "rows": rows, "select_head": True,
            "notes": {"entropy": "nats; 0 = one key", "distance": "expected |i - j|", "cls": "weight on [CLS]",
                      "sep": "weight on [SEP]", "self": "weight on itself", "max": "largest weight"}}


class TextMode(Mode):
    name = "text"
    title = "Text (all-MiniLM-L6-v2)"
    order = 10
    help = ("Type one sentence, or two (the second box) to see attention across a pair. Click a head in the "
            "overview or the statistics table; click tokens to select them.")
    actions = ("flow", "stats")

    @property
    def inputs(self):
        return [text_input("text", "sentence", placeholder="The cat sat on the mat because it was tired."),
                text_input("text_b", "second sentence (optional)", required=False)]

    def extra_description(self) -> dict[str, Any]:
        return {"max_tokens": MAX_TOKENS, "flow_max_tokens": FLOW_MAX_TOKENS}

    def warm(self) -> None:
        """Load the model and analyse one full-length input (not stored), so the first long input a
        person types does not also pay for the first use of every step at that size."""
        minilm()
        self.analyse({"text": "warm " * MAX_TOKENS}, "warm-up")  # not stored

    def analyse(self, inputs: Mapping[str, Any], key: str) -> Analysis:
        from ...interpret import attention_rollout

        enc = encode(inputs["text"], inputs.get("text_b"))
        att, _ = run_minilm(enc)  # (L, H, T, T)
        toks = enc.tokens
        views = {"attention": View("attention", att, toks, toks),
                 "rollout": View("rollout (all layers, heads averaged, residual)",
                                 attention_rollout(att)[None, None], toks, toks, ["all layers"])}
        info = {"tokens": toks, "notices": truncation_notice(enc), "tables": [], "later": ["stats"],
                "flow_available": len(toks) <= FLOW_MAX_TOKENS}
        return Analysis(key, self.name, views, info, state={"att": att})

    def action(self, analysis: Analysis, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if name == "stats":
            return {"tables": self.stats(analysis)}
        if name != "flow":
            return super().action(analysis, name, params)
        from ...interpret import attention_flow

        toks = analysis.info["tokens"]
        if len(toks) > FLOW_MAX_TOKENS:
            raise RequestError(f"attention flow is available up to {FLOW_MAX_TOKENS} tokens (it solves T^2 max-flow "
                               f"problems); this input has {len(toks)}; use rollout instead")
        with analysis.lock:
            if "flow" not in analysis.views:
                flow = attention_flow(analysis.state["att"], progress=False)
                analysis.views["flow"] = View("flow (max flow from each input token)", flow[None, None], toks, toks,
                                              ["all layers"])
        return {"view": "flow", "description": analysis.views["flow"].describe()}

    def stats(self, analysis: Analysis) -> list[dict[str, Any]]:
        """The head-statistics table of ``analysis`` (computed once, then kept in its info)."""
        with analysis.lock:
            if not analysis.info["tables"]:
                analysis.info["tables"] = [stats_table(analysis.state["att"], analysis.info["tokens"])]
            return analysis.info["tables"]


MODE = TextMode
