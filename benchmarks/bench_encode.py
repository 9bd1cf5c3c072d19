"""Sentence-encoding throughput of all-MiniLM-L6-v2: attnkit's model with each implementation
against transformers' own BERT (``sdpa`` and ``eager``) on the same weights, in one run.

The corpus is ``--n`` real English sentences: the first sentence of the DESCRIPTION of the
manual pages under ``/usr/share/man/man1`` (8 to 60 words, sorted by page name, so the same set
on the same machine), or the built-in paraphrase sentences repeated when no manual pages exist.
Every engine gets the same token ids (batches of ``--batch`` sentences sorted by length, as
sentence-transformers does); the timed region is the forward pass plus mean pooling and L2
normalisation for all batches, under ``torch.inference_mode``. attnkit's encoder skips the
padding in its matmuls (``unpad=True``, the default of ``SentenceEncoder.encode``); the row
``attnkit sdpa, padded`` shows the same model computing on the padded batch as transformers does.
Reported: the median of ``--repeats`` passes, sentences per second and the ratio to transformers ``sdpa`` measured in
the same run.

    python benchmarks/bench_encode.py                  # exact impls vs transformers, 1,000 sentences
    python benchmarks/bench_encode.py --group approx   # approximate impls vs attnkit/transformers sdpa
    python benchmarks/bench_encode.py --quick          # 200 sentences, 1 repeat

Engines are timed round-robin (every engine once per round, ``--repeats`` rounds) so that drift
in the machine's speed hits them alike. Writes ``benchmarks/results/encode.json``
(``encode_approx.json`` for ``--group approx``; ``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gzip
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnkit import list_impls, masks
from attnkit.eval.bench import Results
from attnkit.models import load_minilm
from attnkit.models._files import minilm_dir
from attnkit.models._pairs import PARAPHRASE_PAIRS
from attnkit.models.bert import mean_pool

RESULTS = Path(__file__).parent / "results"


def _strip_troff(text: str) -> str:
    text = re.sub(r"\\f[BIRP1-4]|\\f\(..|\\f\[[^\]]*\]|\\\(..|\\\[[^\]]*\]", "", text)
    text = text.replace("\\|", "").replace("\\-", "-").replace("\\ ", " ").replace("\\&", "").replace("\\e", "\\")
    return re.sub(r"\\[a-zA-Z*]\[?[^\s\]]*\]?", "", text)


def _description(path: Path) -> str | None:
    """The first sentence of a man page's DESCRIPTION section, or None."""
    try:
        txt = gzip.open(path).read().decode("utf-8", "replace")
    except OSError:
        return None
    m = re.search(r'^\.S[Hh]\s+"?DESCRIPTION"?\s*$(.*?)^\.S[Hh]', txt, re.M | re.S)
    if not m:
        return None
    lines = [ln for ln in m.group(1).splitlines() if ln and not ln.startswith(".")]
    body = re.sub(r"\s+", " ", _strip_troff(" ".join(lines))).strip()
    first = re.split(r"(?<=[.!?])\s", body, maxsplit=1)[0]
    return first if 8 <= len(first.split()) <= 60 else None


def corpus(n: int) -> tuple[list[str], str]:
    """``n`` sentences and a description of where they came from."""
    folder = Path("/usr/share/man/man1")
    out: list[str] = []
    if folder.is_dir():
        for page in sorted(folder.glob("*.gz")):
            s = _description(page)
            if s and s not in out:
                out.append(s)
            if len(out) == n:
                return out, f"first DESCRIPTION sentence of {n} man1 pages"
    pool = [s for pair in PARAPHRASE_PAIRS for s in pair]
    return [pool[i % len(pool)] for i in range(n)], "built-in paraphrase sentences, repeated"


def batches(tok, sentences: list[str], batch: int) -> list[dict[str, torch.Tensor]]:
    order = sorted(sentences, key=len, reverse=True)
    return [tok(order[i:i + batch]) for i in range(0, len(order), batch)]


def pooled(hidden: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(mean_pool(hidden, am), dim=-1)


def engines() -> dict[str, tuple[str, Callable[[dict], torch.Tensor]]]:
    """name -> (family, function of one tokenised batch returning embeddings)."""
    model, _ = load_minilm()
    window = masks.window(4, 4) | masks.global_tokens([0])
    configs = {
        "attnkit sdpa": ("exact", {"impl": "sdpa"}),
        "attnkit sdpa, padded": ("exact", {"impl": "sdpa", "unpad": False}),
        "attnkit auto": ("exact", {"impl": "auto"}),
        "attnkit blockwise": ("exact", {"impl": "blockwise"}),
        "attnkit reference": ("exact", {"impl": "reference"}),
        "attnkit block_sparse ±4+CLS": ("approx", {"impl": "block_sparse", "mask": window,
                                                   "options": {"block": 8}}),
        "attnkit lsh b8 h2": ("approx", {"impl": "lsh", "options": {"bucket_size": 8, "n_hashes": 2}}),
        "attnkit linear favor256": ("approx", {"impl": "linear", "options": {"feature_map": "favor",
                                                                              "n_features": 256}}),
    }
    registered = set(list_impls())
    out: dict[str, tuple[str, Callable[[dict], torch.Tensor]]] = {}
    for name, (family, kw) in configs.items():
        if kw["impl"] != "auto" and kw["impl"] not in registered:
            print(f"skipped {name}: impl {kw['impl']!r} not registered", file=sys.stderr)
            continue
        out[name] = (family, lambda b, kw=kw: model.embed_batch(b["input_ids"], b["attention_mask"], **kw))
    try:
        from transformers import AutoModel

        from attnkit.integrations import hf
    except ImportError:
        print("skipped transformers: not installed (pip install 'attnkit[hf]')", file=sys.stderr)
        return out
    hf.register()
    for impl in ("sdpa", "eager", "attnkit"):
        m = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation=impl).eval()
        out[f"transformers {impl}"] = ("exact", lambda b, m=m: pooled(m(**b).last_hidden_state, b["attention_mask"]))
    return out


GROUPS = {
    "exact": ("attnkit sdpa", "attnkit sdpa, padded", "attnkit auto", "attnkit blockwise", "attnkit reference",
              "transformers sdpa", "transformers eager", "transformers attnkit"),
    "approx": ("attnkit sdpa", "attnkit block_sparse ±4+CLS", "attnkit lsh b8 h2", "attnkit linear favor256",
               "transformers sdpa"),
}


def time_round_robin(engines: dict, data: list, repeats: int) -> dict[str, list[float]]:
    """Seconds per pass over ``data`` for every engine: one warm-up pass each, then ``repeats``
    rounds that run every engine once in turn (so drift hits all engines alike)."""
    def one_pass(fn) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in data:
                fn(b)
        return time.perf_counter() - t0

    for _, fn in engines.values():
        one_pass(fn)
    runs: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(repeats):
        for name, (_, fn) in engines.items():
            runs[name].append(one_pass(fn))
            print(f"round {r + 1}/{repeats} {name:<30} {runs[name][-1]:7.3f} s", file=sys.stderr)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", choices=sorted(GROUPS), default="exact",
                   help="exact: attnkit exact impls vs transformers (default); approx: approximate impls")
    p.add_argument("--n", type=int, default=1000, help="number of sentences (default 1000)")
    p.add_argument("--batch", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per engine (median reported)")
    p.add_argument("--quick", action="store_true", help="200 sentences, 1 repeat")
    p.add_argument("--json", default=None,
                   help="output JSON (default benchmarks/results/encode[_approx][_quick].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 200, 1
    sentences, source = corpus(args.n)
    _, tok = load_minilm()
    data = batches(tok, sentences, args.batch)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in data)
    res = Results(f"encode_{args.group}", meta={
        "sentences": len(sentences), "batch": args.batch, "corpus": source, "group": args.group,
        "mean_tokens": n_tokens / len(sentences), "repeats": args.repeats, "timing": "round-robin, median"})
    eng = {k: v for k, v in engines().items() if k in GROUPS[args.group]}
    runs = time_round_robin(eng, data, args.repeats)
    with torch.inference_mode():
        embs = {name: torch.cat([fn(b) for b in data]) for name, (_, fn) in eng.items()}
    first = next(iter(embs.values()))
    for name, (family, _) in eng.items():
        sec = statistics.median(runs[name])
        res.add({"sentences": len(sentences)}, name, sec, family=family, runs=runs[name],
                sentences_per_s=len(sentences) / sec, min_cos_vs_first=float((embs[name] * first).sum(-1).min()))
    print(f"all-MiniLM-L6-v2 encoding, {len(sentences)} sentences ({source}; mean "
          f"{n_tokens / len(sentences):.1f} tokens), batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} round-robin passes")
    print(table(res))
    suffix = ("_approx" if args.group == "approx" else "") + ("_quick" if args.quick else "")
    path = Path(args.json) if args.json else RESULTS / f"encode{suffix}.json"
    print(f"wrote {res.save(path)}")
    return 0


def table(res: Results) -> str:
    """impl | family | seconds | sentences/s | ratio to transformers sdpa and to attnkit sdpa."""
    by = {r["impl"]: r for r in res.rows}
    base_hf = by.get("transformers sdpa", {}).get("sentences_per_s")
    base_ak = by.get("attnkit sdpa", {}).get("sentences_per_s")
    lines = ["| engine | family | s per pass | sentences/s | throughput / transformers sdpa | "
             "throughput / attnkit sdpa | min cos vs first |", "|---|---|---|---|---|---|---|"]
    for r in res.rows:
        sps = r["sentences_per_s"]
        rel_hf = f"{sps / base_hf:.2f}x" if base_hf else "-"
        rel_ak = f"{sps / base_ak:.2f}x" if base_ak else "-"
        lines.append(f"| {r['impl']} | {r['family']} | {r['seconds']:.3f} | {sps:.1f} | {rel_hf} | {rel_ak} | "
                     f"{r['min_cos_vs_first']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
