"""Interpretability on attnkit: capture the attention weights of any model that calls
:func:`attnkit.attention` (also from implementations that never materialise them), attention
rollout and flow, per-head statistics, PNG views and one self-contained HTML report."""

from .capture import AttentionCapture, AttentionRecord, capture_attention
from .html import render_html, write_html
from .plot import head_grid, lines_view, matrix_view, model_overview
from .report import explain_sentence
from .rollout import attention_flow, attention_rollout, max_flow, residual_attention
from .stats import HeadStats, head_stats

__all__ = [
    "AttentionCapture", "AttentionRecord", "capture_attention", "render_html", "write_html", "head_grid",
    "lines_view", "matrix_view", "model_overview", "explain_sentence", "attention_flow", "attention_rollout",
    "max_flow", "residual_attention", "HeadStats", "head_stats",
]
