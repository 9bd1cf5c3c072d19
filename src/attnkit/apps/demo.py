"""The four steps of attention on one short sentence, printed, then every implementation
checked against the reference. What ``attnkit demo`` runs."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import Tensor

from .. import masks
from ..call import make_call
from ..dispatch import not_supported_reasons
from ..functional import attention
from ..registry import get_impl, list_impls

__all__ = ["SENTENCE", "embed_tokens", "four_steps", "compare_impls", "run_demo"]

SENTENCE = "the cat sat on the mat because the cat was tired"


def _trigrams(word: str) -> list[str]:
    padded = f"#{word}#"
    return [padded[i : i + 3] for i in range(len(padded) - 2)]


def embed_tokens(tokens: list[str], dim: int = 16) -> Tensor:
    """Toy embeddings ``(T, dim)``: a sum of hashed character-trigram vectors plus sinusoidal
    positions, so equal words get similar vectors and related spellings share features."""
    rows = []
    for tok in tokens:
        vec = torch.zeros(dim)
        for tri in _trigrams(tok):
            seed = int.from_bytes(hashlib.sha256(tri.encode()).digest()[:8], "little")
            vec += torch.randn(dim, generator=torch.Generator().manual_seed(seed))
        rows.append(vec / math.sqrt(len(_trigrams(tok))))
    pos = torch.arange(len(tokens)).unsqueeze(1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2) / dim)
    pe = torch.zeros(len(tokens), dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return torch.stack(rows) + 0.3 * pe


def four_steps(x: Tensor, head_dim: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """Project ``x (T, E)`` with seeded random weights, then score, weight (causal softmax) and
    combine, keeping every intermediate. Returns q, k, v ``(1, 1, T, D)``, scores, weights, out."""
    g = torch.Generator().manual_seed(seed)
    e = x.shape[-1]
    w_q, w_k, w_v = (torch.randn(e, head_dim, generator=g) / math.sqrt(e) for _ in range(3))
    q, k, v = ((x @ w).view(1, 1, x.shape[0], head_dim) for w in (w_q, w_k, w_v))  # 1. project
    mask = masks.causal()
    call = make_call(q, k, v, mask)
    scores = call.scores()  # 2. score: (1, 1, T, T)
    out, weights = attention(q, k, v, mask, impl="reference", return_weights=True)  # 3. weight, 4. combine
    return {"q": q, "k": k, "v": v, "scores": scores, "weights": weights, "out": out,
            "mask": mask.dense(*scores.shape[-2:])}


def _matrix(title: str, m: Tensor, tokens: list[str], blank: Tensor | None = None) -> str:
    width = max(len(t) for t in tokens) + 1
    lines = [title, " " * width + "".join(f"{t[:6]:>7}" for t in tokens)]
    for i, tok in enumerate(tokens):
        cells = ["      ." if blank is not None and not blank[i, j] else f"{float(m[i, j]):7.2f}"
                 for j in range(len(tokens))]
        lines.append(f"{tok:<{width}}" + "".join(cells))
    return "\n".join(lines)


def compare_impls(q: Tensor, k: Tensor, v: Tensor, mask: masks.Mask | None) -> list[tuple[str, str, str]]:
    """Every registered implementation vs the reference on (q, k, v, mask): (impl, max |error|, note)."""
    ref = attention(q, k, v, mask, impl="reference")
    rows = []
    for name in list_impls():
        reasons = not_supported_reasons(get_impl(name), make_call(q, k, v, mask))
        if reasons:
            rows.append((name, "-", "cannot run: " + "; ".join(reasons)))
            continue
        err = (attention(q, k, v, mask, impl=name) - ref).abs().max().item()
        note = "exact" if get_impl(name).exact else "approximation (default settings)"
        rows.append((name, f"{err:.2e}", note))
    return rows


def _heatmap(weights: Tensor, tokens: list[str], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(weights.numpy(), cmap="viridis", vmin=0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right")
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title("causal softmax attention weights")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(out_png: str | Path | None = "attnkit-demo.png", sentence: str = SENTENCE) -> dict[str, Tensor]:
    """Print the four steps on ``sentence`` and the implementation check; write the heatmap."""
    tokens = sentence.split()
    if not tokens:
        raise ValueError("sentence must contain at least one word")
    steps = four_steps(embed_tokens(tokens))
    allowed = steps["mask"]
    print(f"sentence: {sentence!r}  ({len(tokens)} tokens, toy trigram embeddings, one head, D=8)\n")
    print("1. project: q, k, v = x @ W_q, x @ W_k, x @ W_v   (each (1, 1, T, 8))\n")
    print(_matrix("2. score: q . k / sqrt(8)   (masked entries shown as '.')", steps["scores"][0, 0], tokens, allowed))
    print()
    print(_matrix("3. weight: causal softmax over each row (rows sum to 1)", steps["weights"][0, 0], tokens, allowed))
    print()
    norms = steps["out"][0, 0].norm(dim=-1)
    print("4. combine: out_i = sum_j w_ij v_j   |out_i| = " + " ".join(f"{n:.2f}" for n in norms.tolist()))
    top = steps["weights"][0, 0].argmax(-1).tolist()
    print("   strongest key per query: " + ", ".join(f"{tokens[i]}->{tokens[j]}" for i, j in enumerate(top)))
    print("\nevery implementation vs reference, same q, k, v, causal mask:")
    for name, err, note in compare_impls(steps["q"], steps["k"], steps["v"], masks.causal()):
        print(f"  {name:<14} max|err| {err:>9}   {note}")
    if out_png is not None:
        path = _heatmap(steps["weights"][0, 0], tokens, Path(out_png))
        print(f"\nheatmap: {path}" if path else "\n(matplotlib not installed: no heatmap written)")
    return steps
