"""``attnkit demo translation``: the quick number-words transformer (trained once and cached
under ``$ATTNKIT_CACHE/runs/``), a few held-out numbers translated, and where it looked."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..trainer import cache_dir
from .data import number_pairs
from .pictures import translation_alignment
from .task import load_run, train, translate
from .tokenizer import BOS, EOS, PAD

__all__ = ["demo_run", "run_demo", "run_translation_demo"]


def demo_run(log=print) -> Path:
    """The cached quick transformer run (trained now if missing)."""
    path = cache_dir("runs") / "translation-numbers-fr-quick"
    if not (path / "results.json").exists():
        if path.exists():  # an unfinished earlier attempt (the folder is the cache's own)
            shutil.rmtree(path)
        log("training the quick number-words transformer (once; cached in " + str(path) + ") ...")
        train(model="transformer", quick=True, out=path, progress=False, log=lambda *_: None)
    return path


def _alignment_text(lr, src: str, hyp: str) -> str:
    """For each emitted token, the source token it attended to most (last layer, mean of heads)."""
    tok = lr.tokenizer
    src_ids, out = tok.encode(src) + [EOS], tok.encode(hyp) + [EOS]
    with torch.no_grad():
        w = lr.model.alignments(torch.tensor([src_ids]), torch.tensor([src_ids]) != PAD,
                                torch.tensor([[BOS] + out[:-1]]))  # (L, H, 1, T, S)
    m = w[-1, :, 0].mean(0)  # (T, S)
    src_t, out_t = tok.tokens(src_ids), tok.tokens(out)
    return "  ".join(f"{o.lstrip(chr(0x2581))}<-{src_t[int(m[i].argmax())].lstrip(chr(0x2581))}"
                     for i, o in enumerate(out_t))


def run_translation_demo(out: str | Path, log=print) -> None:
    lr = load_run(demo_run(log))
    examples = [p for p in number_pairs("fr", "test", 300) if p.src_words >= 5][:4]
    hyps = translate(lr.model, lr.tokenizer, [p.src for p in examples])
    for p, h in zip(examples, hyps):
        mark = "ok" if h == p.tgt else f"expected: {p.tgt}"
        log(f"{p.src}\n  -> {h}   [{mark}]\n  attended: {_alignment_text(lr, p.src, h)}")
    made = translation_alignment(lr.model, lr.tokenizer, examples[0].src, out, translation=hyps[0])
    log("alignment pictures: " + ", ".join(str(m) for m in made))


run_demo = run_translation_demo  # the name ``attnkit demo TASK`` calls
