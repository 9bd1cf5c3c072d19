"""The model side of the explorer: what one analysis holds, how its matrices travel, where results wait.

An :class:`Analysis` is everything a mode computed for one input: named *views*, each a stack of
attention matrices ``(L, H, Tq, Tk)`` with row and column labels, plus JSON ``info`` (notices,
tables, text). The server keeps analyses in a :class:`ResultStore` (bounded by bytes) and sends
only what a view needs: one head (or the mean of heads, or every head of one layer) as float16,
or the whole layer x head overview as one byte per value, each pooled into token blocks when the
page has fewer pixels than there are tokens (:func:`pool_blocks`).

Shape legend: L layers, H heads, Tq query (row) tokens, Tk key (column) tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import AttnKitError, ShapeError

__all__ = ["View", "Analysis", "ResultStore", "RequestError", "pool_blocks", "encode_f16", "encode_u8",
           "encode_picture", "token_sums", "analysis_key", "MAX_CELLS", "STORE_BYTES"]

MAX_CELLS = 2048  # cells per matrix side a client may ask for (a 512-token head fits unpooled)
STORE_BYTES = 512 * 2**20  # the analyses kept at once, in bytes of stored weights


class RequestError(AttnKitError):
    """A request the server refuses: ``status`` is the HTTP code (4xx), the message says why."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class View:
    """One family of attention matrices: ``weights (L, H, Tq, Tk)`` (stored float16), the labels
    of its rows (queries) and columns (keys), and what to call its layers."""

    title: str
    weights: Tensor
    rows: list[str]
    cols: list[str]
    layer_names: list[str] | None = None

    def __post_init__(self) -> None:
        w = self.weights
        if not isinstance(w, Tensor) or w.dim() != 4:
            got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ShapeError(f"view {self.title!r}: weights must be (L, H, Tq, Tk); got {got}")
        if w.shape[-2] != len(self.rows) or w.shape[-1] != len(self.cols):
            raise ShapeError(f"view {self.title!r}: weights cover {tuple(w.shape[-2:])} tokens; labels give "
                             f"{len(self.rows)} rows and {len(self.cols)} columns")
        half = w.detach().to(torch.float16).cpu().contiguous()
        if not torch.isfinite(half.sum(dtype=torch.float64)):  # a NaN or inf cell makes the sum so; finite ones cannot
            raise AttnKitError(f"view {self.title!r} holds non-finite weights (or beyond float16's range, 65504); "
                               "expected finite attention weights")
        self.weights = half

    @property
    def layers(self) -> int:
        return self.weights.shape[0]

    @property
    def heads(self) -> int:
        return self.weights.shape[1]

    def describe(self) -> dict[str, Any]:
        """What the page needs to ask for this view's matrices."""
        return {"title": self.title, "layers": self.layers, "heads": self.heads, "rows": self.rows,
                "cols": self.cols, "layer_names": self.layer_names or [f"layer {i}" for i in range(self.layers)]}

    def matrix(self, layer: int, head: int | str) -> Tensor:
        """``(Tq, Tk)`` float32 for one head, or the mean of the layer's heads (``head="mean"``),
        or every head of the layer ``(H, Tq, Tk)`` (``head="all"``)."""
        if head == "mean":
            return self.weights[layer].float().mean(0)
        if head == "all":
            return self.weights[layer].float()  # (H, Tq, Tk)
        return self.weights[layer, int(head)].float()


@dataclass
class Analysis:
    """What one mode computed for one input: its views, JSON ``info`` for the page, and
    ``state``: objects the mode keeps for later actions (never sent)."""

    key: str
    mode: str
    views: dict[str, View]
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(v.weights.numel() * v.weights.element_size() for v in self.views.values())

    def view(self, name: str) -> View:
        if name not in self.views:
            raise RequestError(f"view {name!r} is not in this analysis; expected one of {', '.join(self.views)}",
                               404)
        return self.views[name]

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "mode": self.mode, "views": {n: v.describe() for n, v in self.views.items()},
                "info": self.info}


def analysis_key(mode: str, inputs: Mapping[str, Any]) -> str:
    """A stable key for ``inputs`` of ``mode``: equal requests share one analysis."""
    text = json.dumps({"mode": mode, "inputs": inputs}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ResultStore:
    """Analyses by key, least recently used dropped first once their weights pass ``max_bytes``;
    :meth:`get_or_compute` runs a computation once however many requests ask for it at once."""

    def __init__(self, max_bytes: int = STORE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Analysis] = OrderedDict()
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Analysis:
        with self._lock:
            if key not in self._items:
                raise RequestError(f"no analysis {key!r} (unknown, or dropped to make room); run the input again",
                                   404)
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, analysis: Analysis) -> None:
        with self._lock:
            self._items[analysis.key] = analysis
            self._items.move_to_end(analysis.key)
            total = sum(a.nbytes for a in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                total -= old.nbytes

    def get_or_compute(self, key: str, compute: Callable[[], Analysis]) -> Analysis:
        """The stored analysis ``key``, else ``compute()`` (once: concurrent callers wait for it)."""
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                event = self._pending.get(key)
                if event is None:
                    event = self._pending[key] = threading.Event()
                    owner = True
                else:
                    owner = False
            if not owner:
                event.wait()
                with self._lock:
                    if key in self._items:
                        return self._items[key]
                continue  # the computation failed: try it ourselves
            try:
                analysis = compute()
                self.put(analysis)
                return analysis
            finally:
                with self._lock:
                    self._pending.pop(key, None)
                event.set()


# ----------------------------------------------------------------------------------------------
# compact matrices
# ----------------------------------------------------------------------------------------------


def _group(n: int, cells: int) -> int:
    """Tokens per block so that ``n`` tokens fit in ``cells`` blocks."""
    return max(1, math.ceil(n / max(1, cells)))


def pool_blocks(m: Tensor, cells: int) -> tuple[Tensor, tuple[int, int]]:
    """Pool ``m (..., Tq, Tk)`` into at most ``cells`` blocks a side: each block holds the mean over
    its queries of the weight summed over its keys (so rows still sum to what they summed to).
    Returns the pooled tensor and the block sizes ``(gq, gk)`` (``(1, 1)``: unchanged).

    >>> w = torch.softmax(torch.randn(10, 10), -1)
    >>> p, g = pool_blocks(w, 4)
    >>> tuple(p.shape), g, bool(torch.allclose(p.sum(-1), torch.ones(4)))
    ((4, 4), (3, 3), True)
    """
    tq, tk = m.shape[-2:]
    gq, gk = _group(tq, cells), _group(tk, cells)
    if gq == 1 and gk == 1:
        return m, (1, 1)
    flat = m.reshape(-1, 1, tq, tk).double()
    pooled = torch.nn.functional.avg_pool2d(flat, (gq, gk), ceil_mode=True)  # (N, 1, nQ, nK) block means
    sizes = torch.tensor([min(gk, tk - b * gk) for b in range(pooled.shape[-1])], dtype=pooled.dtype)
    out = (pooled * sizes).reshape(*m.shape[:-2], *pooled.shape[-2:])
    return out.to(m.dtype), (gq, gk)


def encode_f16(t: Tensor) -> str:
    """``t`` as little-endian float16 bytes, base64 (what the page's ``decodeF16`` reads)."""
    return base64.b64encode(t.detach().to(torch.float16).contiguous().cpu().numpy().tobytes()).decode("ascii")


def encode_u8(t: Tensor) -> tuple[str, list[float]]:
    """``t (N, ...)`` as one byte per value, each leading slice scaled by its own maximum:
    ``value = byte / 255 * scale[n]``. Returns the base64 data and the scales."""
    flat = t.detach().double().reshape(t.shape[0], -1)
    scale = flat.amax(1).clamp_min(1e-12)  # (N,)
    q = torch.round(255 * flat / scale[:, None]).clamp(0, 255).to(torch.uint8)
    return base64.b64encode(q.numpy().tobytes()).decode("ascii"), [float(s) for s in scale]


def encode_picture(values: Tensor, kind: str, **extra: Any) -> dict[str, Any]:
    """A greyscale picture ``values (height, width)`` for the page (an image, a spectrogram) as one
    byte per pixel, scaled from its own minimum (0) to its maximum (255), row by row from the top:
    ``{"kind", "width", "height", "data", "range": [min, max], **extra}``."""
    if not isinstance(values, Tensor) or values.dim() != 2 or values.numel() == 0:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ShapeError(f"a picture must be a non-empty (height, width) tensor; got {got}")
    v = values.detach().double().cpu()
    if not torch.isfinite(v).all():
        raise AttnKitError("a picture holds non-finite values; expected finite pixel values")
    lo, hi = float(v.min()), float(v.max())
    q = torch.round(255 * (v - lo) / max(hi - lo, 1e-12)).clamp(0, 255).to(torch.uint8)
    return {"kind": kind, "height": int(v.shape[0]), "width": int(v.shape[1]),
            "data": base64.b64encode(q.contiguous().numpy().tobytes()).decode("ascii"), "range": [lo, hi], **extra}


def token_sums(m: Tensor, tokens: Sequence[int]) -> dict[str, list[float]]:
    """For the selected ``tokens`` of ``m (Tq, Tk)``: ``rows``, the attention they pay to each key
    (their rows summed, ``(Tk,)``), and ``cols``, the attention each query pays to them (their
    columns summed, ``(Tq,)``, only for square matrices)."""
    out = {"rows": [float(x) for x in m[list(tokens)].sum(0)]}
    if m.shape[0] == m.shape[1]:
        out["cols"] = [float(x) for x in m[:, list(tokens)].sum(1)]
    return out
