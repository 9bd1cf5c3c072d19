"""``attnkit demo summarization``: the quick pointer-generator (trained once and cached under
``$ATTNKIT_CACHE/runs/``), one held-out text per source summarized greedily and by beam search,
and the picture of where it looked and what it copied (of a summary that copies a word outside
the vocabulary, where there is one)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..trainer import cache_dir
from .data import SOURCES, SummaryPair, require_data, words
from .pictures import copy_picture
from .task import PRESETS, _load_splits, load_run, train

__all__ = ["demo_run", "demo_examples", "run_demo"]

BEAM = 4  # the beam the demo shows next to greedy
SHOWN_WORDS = 40  # source words printed


def demo_run(log: Callable[[str], None] = print) -> Path:
    """The cached quick pointer-generator run (trained now if missing)."""
    path = cache_dir("runs") / "summarization-all-pointer-quick"
    if not (path / "results.json").exists():
        if path.exists():  # an unfinished earlier attempt (the folder is the cache's own)
            shutil.rmtree(path)
        log(f"training the quick pointer-generator (once; cached in {path}) ...")
        train(model="pointer", quick=True, out=path, progress=False, log=lambda *_: None)
    return path


def demo_examples(data: str = "all") -> list[SummaryPair]:
    """One held-out pair per source (15 to 45 words long, the middle one of those), in source order."""
    splits, _ = _load_splits(data, PRESETS["quick"])
    chosen = []
    for source in SOURCES:
        fit = [p for p in splits["test"] if p.source == source and 15 <= len(words(p.text)) <= 45]
        if fit:
            chosen.append(fit[len(fit) // 2])
    return chosen


def run_demo(out: str | Path, log: Callable[[str], None] = print) -> None:
    require_data("all")
    lr = load_run(demo_run(log))
    examples = demo_examples(lr.config["data"])
    texts = [p.text for p in examples]
    greedy, beam = lr.summarize(texts), lr.summarize(texts, beam=BEAM)
    known = set(lr.vocab.itos)
    for p, g, b in zip(examples, greedy, beam):
        source = words(p.text)
        copied = sorted({w for w in (*g.split(), *b.split()) if w not in known})
        log(f"[{p.source}] {' '.join(source[:SHOWN_WORDS])}{' ...' if len(source) > SHOWN_WORDS else ''}\n"
            f"  reference: {p.summary}\n  greedy:    {g}\n  beam {BEAM}:    {b}"
            + (f"\n  copied from outside the vocabulary: {', '.join(copied)}" if copied else ""))
    # the picture of the first beam summary that copies a word outside the vocabulary (else the first)
    shown = next((i for i, b in enumerate(beam) if any(w not in known for w in b.split())), 0)
    made = copy_picture(lr, texts[shown], out, beam=BEAM)
    log(f"cross-attention and copy probability of the {examples[shown].source} summary (beam {BEAM}): {made}")
