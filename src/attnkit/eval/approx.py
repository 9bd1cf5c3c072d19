"""What an approximate attention costs in accuracy and what it saves: :func:`compare`.

Runs several implementations on the same ``q, k, v`` (and mask) and reports, for each:

* ``rel_error``: ``||out - exact|| / ||exact||`` (Frobenius norm over the whole output), where
  ``exact`` is the output of the exact dispatcher choice (``impl="auto"``);
* ``recall``: attention-mass recall, the exact softmax weight that falls on the keys the method
  attended, averaged over queries (``recall_p10``: its 10th percentile). Dense methods (exact
  ones, kernel attention) attend every key, so their recall is 1 by definition; LSH reports the
  keys its buckets and chunks actually reached;
* ``ms``: median forward time (no grad) measured in the same run;
* ``peak_mib``: peak extra resident memory of one forward, measured in a fresh process
  (optional: ``memory=True``).

Exact weights are recomputed in query blocks, so no ``(B, H, T, S)`` buffer is held at once.

>>> from attnkit.eval.approx import compare, compare_inputs
>>> q, k, v = compare_inputs(t=64, dist="clustered")
>>> res = compare(q, k, v, ["sdpa", ("lsh", {"bucket_size": 16})], repeats=1)
>>> [r.label for r in res.rows]
['sdpa', 'lsh']

Shape legend: B batch, H heads, T queries, S keys, D head dim, Dv value dim.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..call import make_call
from ..errors import AttnKitError
from ..functional import attention
from ..masks import Mask
from ..registry import get_impl
from ..shapes import repeat_kv
from .bench import peak_memory, time_fn

__all__ = ["Candidate", "CompareRow", "Comparison", "compare", "compare_inputs", "mass_recall"]

_BLOCK_ELEMS = 1 << 24  # exact-weight elements held at once


@dataclass(frozen=True)
class Candidate:
    """One implementation with its options, shown as ``label``."""

    label: str
    impl: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareRow:
    """The measurements of one candidate."""

    label: str
    impl: str
    options: dict[str, Any]
    rel_error: float
    max_abs_error: float
    recall: float | None
    recall_p10: float | None
    ms: float | None
    peak_mib: float | None


@dataclass(frozen=True)
class Comparison:
    """All rows of one :func:`compare` run and the problem they were measured on."""

    problem: dict[str, Any]
    rows: list[CompareRow]

    def table(self) -> str:
        """A Markdown table; ``time/first`` is the ratio to the first candidate's time."""
        base = self.rows[0].ms if self.rows else None
        head = ["method", "rel. error", "mass recall", "recall p10", "ms", f"time / {self.rows[0].label}",
                "peak MiB"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
        for r in self.rows:
            ratio = None if (r.ms is None or not base) else r.ms / base
            lines.append("| " + " | ".join([r.label, fmt(r.rel_error, ".3g"), fmt(r.recall, ".3f"),
                                            fmt(r.recall_p10, ".3f"), fmt(r.ms, ".2f"), fmt(ratio, ".2f"),
                                            fmt(r.peak_mib, ".0f")]) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready contents."""
        return {"problem": self.problem, "rows": [asdict(r) for r in self.rows]}


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def compare_inputs(*, batch: int = 1, heads: int = 4, t: int = 1024, head_dim: int = 64,
                   dist: str = "gaussian", n_clusters: int = 16, noise: float = 0.3, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic ``q, k, v`` ``(B, H, T, D)``.

    ``dist="gaussian"``: i.i.d. standard normal entries, the hard case for LSH and random
    features (scores have no structure, the weight of a query is spread over many keys).
    ``dist="clustered"``: queries and keys drawn around ``n_clusters`` shared centres (norm
    ``sqrt(D)``-scaled, relative ``noise``), so each query's weight concentrates on the keys of
    its cluster, the case LSH is designed for.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, t, head_dim)
    v = torch.randn(shape, generator=g, dtype=dtype)
    if dist == "gaussian":
        return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype), v
    if dist != "clustered":
        raise AttnKitError(f"dist must be 'gaussian' or 'clustered'; got {dist!r}")
    centres = torch.randn(batch, heads, n_clusters, head_dim, generator=g, dtype=dtype) * 1.5

    def draw() -> Tensor:
        lab = torch.randint(0, n_clusters, (batch, heads, t), generator=g)
        base = centres.gather(2, lab.unsqueeze(-1).expand(*lab.shape, head_dim))  # (B, H, T, D)
        return base + noise * 1.5 * torch.randn(shape, generator=g, dtype=dtype)

    return draw(), draw(), v


# ----------------------------------------------------------------------------------------------
# recall
# ----------------------------------------------------------------------------------------------


def _exact_weight_blocks(q: Tensor, k: Tensor, mask: Mask | None, scale: float) -> Iterator[tuple[int, Tensor]]:
    """Exact softmax weights in query blocks: ``(i0, w (B, H, n, S))``."""
    b, h, t, _ = q.shape
    s = k.shape[2]
    kk = repeat_kv(k, h // k.shape[1]).float()
    step = max(1, _BLOCK_ELEMS // max(1, b * h * s))
    bi = torch.arange(b).view(-1, 1, 1, 1)
    hi = torch.arange(h).view(1, -1, 1, 1)
    j = torch.arange(s).view(1, 1, 1, -1)
    for i0 in range(0, t, step):
        sc = (q[:, :, i0:i0 + step].float() @ kk.transpose(-1, -2)) * scale  # (B, H, n, S)
        if mask is not None:
            i = torch.arange(i0, min(t, i0 + step)).view(1, 1, -1, 1)
            sc = sc.masked_fill(~mask.mod(bi, hi, i, j, t, s), -math.inf)
        w = torch.softmax(sc, -1)
        yield i0, torch.nan_to_num(w, nan=0.0)


def _support_blocks(cand: Candidate, q: Tensor, k: Tensor, v: Tensor, mask: Mask | None,
                    generator: torch.Generator | None):
    """A function ``(i0, n) -> bool (B, H, n, S)`` of attended keys, or None when every key is
    attended (dense methods) or the support is not known."""
    spec = get_impl(cand.impl)
    if spec.exact:
        return None
    if cand.impl == "lsh":
        from ..impls.lsh import lsh_attention, settings_from_options

        call = make_call(q, k, v, mask, options=cand.options)
        res = lsh_attention(q, k, v, mask, scale=call.scale, settings=settings_from_options(cand.options),
                            generator=generator, return_weights=True)
        idx, s = res.indices, k.shape[2]

        def support(i0: int, n: int) -> Tensor:
            blk = idx[:, :, i0:i0 + n]  # (B, H, n, K)
            out = torch.zeros(*blk.shape[:3], s + 1, dtype=torch.bool)
            out.scatter_(-1, torch.where(blk >= 0, blk, s), True)
            return out[..., :s]

        return support
    return None  # kernel attention and other dense approximations weigh every key


def mass_recall(q: Tensor, k: Tensor, mask: Mask | None, scale: float, support) -> tuple[float, float]:
    """Mean and 10th percentile, over queries with at least one allowed key, of the exact weight
    that falls on the keys ``support(i0, n) -> bool (B, H, n, S)`` marks as attended."""
    per_query = []
    for i0, w in _exact_weight_blocks(q, k, mask, scale):
        sup = support(i0, w.shape[2])
        alive = w.sum(-1) > 0  # (B, H, n)
        per_query.append((w * sup).sum(-1)[alive])
    got = torch.cat(per_query)
    if got.numel() == 0:
        return 1.0, 1.0
    return float(got.mean()), float(got.float().quantile(0.1))


# ----------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------


def _candidates(entries: Sequence[str | tuple]) -> list[Candidate]:
    out = []
    for e in entries:
        if isinstance(e, Candidate):
            out.append(e)
        elif isinstance(e, str):
            out.append(Candidate(e, e))
        elif isinstance(e, tuple) and len(e) == 2:
            out.append(Candidate(e[0], e[0], dict(e[1])))
        elif isinstance(e, tuple) and len(e) == 3:
            out.append(Candidate(e[0], e[1], dict(e[2])))
        else:
            raise AttnKitError(f"compare: each candidate must be an impl name, (impl, options) or "
                               f"(label, impl, options); got {e!r}")
        get_impl(out[-1].impl)  # unknown names fail here, listing the valid ones
    return out


def _memory_setup(path: str, index: int):
    """Peak-memory probe: load the saved problem and return the forward of candidate ``index``."""
    data = torch.load(path, weights_only=False)
    cand = data["candidates"][index]
    q, k, v, mask = data["q"], data["k"], data["v"], data["mask"]

    def run() -> None:
        with torch.no_grad():
            attention(q, k, v, mask, impl=cand.impl, options=cand.options)

    return run


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def compare(q: Tensor, k: Tensor, v: Tensor, candidates: Sequence[str | tuple | Candidate], mask: Mask | None = None,
            *, repeats: int = 3, memory: bool = False, recall: bool = True,
            generator_seed: int | None = None) -> Comparison:
    """Run ``candidates`` on ``q (B, H, T, D)``, ``k (B, Hkv, S, D)``, ``v (B, Hkv, S, Dv)`` and
    measure each against exact attention (see the module docstring).

    ``candidates``: impl names, ``(impl, options)`` or ``(label, impl, options)`` tuples.
    ``memory=True`` adds the peak extra memory of one forward (a fresh process per candidate).
    ``generator_seed``: randomised methods draw from a generator seeded with it (else their
    own ``seed`` option).
    """
    cands = _candidates(candidates)
    with torch.no_grad():
        exact = attention(q, k, v, mask).float()
        scale = make_call(q, k, v, mask).scale
        norm = float(exact.norm()) or 1.0
        rows = []
        tmp = None
        if memory:
            tmp = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
            torch.save({"q": q, "k": k, "v": v, "mask": mask, "candidates": cands}, tmp.name)
        try:
            for n, c in enumerate(cands):
                out = attention(q, k, v, mask, impl=c.impl, options=c.options,
                                generator=_generator(generator_seed)).float()
                err = float((out - exact).norm()) / norm
                max_abs = float((out - exact).abs().max())
                rec = p10 = None
                if recall:
                    sup = _support_blocks(c, q, k, v, mask, _generator(generator_seed))
                    rec, p10 = (1.0, 1.0) if sup is None else mass_recall(q, k, mask, scale, sup)
                t = time_fn(lambda c=c: attention(q, k, v, mask, impl=c.impl, options=c.options), repeats=repeats)
                mib = None
                if tmp is not None:
                    probe = peak_memory("attnkit.eval.approx:_memory_setup", {"path": tmp.name, "index": n})
                    mib = None if probe is None else probe["peak_extra_mib"]
                rows.append(CompareRow(c.label, c.impl, dict(c.options), err, max_abs, rec, p10, t.median * 1e3, mib))
        finally:
            if tmp is not None:
                Path(tmp.name).unlink(missing_ok=True)
    problem = {"q": list(q.shape), "k": list(k.shape), "v": list(v.shape), "dtype": str(q.dtype),
               "mask": repr(mask), "threads": torch.get_num_threads()}
    return Comparison(problem, rows)
