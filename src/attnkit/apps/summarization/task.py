"""The summarization task end to end: pairs, word vocabulary, model, training with the shared
trainer, evaluation on held-out pairs against the lead baseline, and summarizing new text.

Presets: ``quick`` (the test suite's size: well under a minute on 2 cores) and ``full``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import RunFolder, TrainConfig, Trainer, TrainResult, load_weights, read_json, write_json
from ..translation.decoding import beam_hypotheses
from .data import DATASETS, SummaryPair, load_pairs, require_data, words
from .metrics import copy_rate, lead, novel_ngram_rate, rouge
from .models import BOS, EOS, MODELS, PAD, UNK, Summarizer, SummConfig, WordVocab, build_model

__all__ = ["TASK", "Preset", "PRESETS", "THRESHOLDS", "MAX_INPUT_WORDS", "Example", "encode", "collate", "train",
           "greedy", "beam_search", "decode", "LoadedRun", "load_run", "summarize", "evaluate_run", "summary"]

TASK = "summarization"
THRESHOLDS = (20.0, 25.0, 30.0, 33.0, 35.0)  # validation ROUGE-L levels whose first step and second are reported
MAX_INPUT_WORDS = 5000  # longer inputs are refused (the model reads the first src_len words)


@dataclass(frozen=True)
class Preset:
    """Sizes of one run: data, vocabulary, model and training."""

    n_train: int | None  # None: every training pair
    n_valid: int
    n_test: int | None  # None: the whole test split
    vocab: int  # words in the vocabulary, specials included
    src_len: int  # source words read
    tgt_len: int  # summary words produced, at most
    batch_size: int
    transformer: dict[str, Any]  # SummConfig fields of the transformers
    rnn: dict[str, Any]  # SummConfig fields of the GRU
    train: TrainConfig


PRESETS = {
    "quick": Preset(3000, 100, 300, 2000, 40, 14, 32, dict(d_model=64, layers=2, heads=4, ff=128, dropout=0.0),
                    dict(d_model=64, emb_dim=64, dropout=0.0),
                    TrainConfig(max_steps=300, budget_seconds=120, lr=3e-3, warmup_steps=30, eval_every=150,
                                metric="rougeL", progress=False)),
    "full": Preset(None, 300, None, 4000, 64, 20, 32, dict(d_model=128, layers=2, heads=4, ff=256, dropout=0.1),
                   dict(d_model=128, emb_dim=128, dropout=0.1),
                   TrainConfig(max_steps=30000, budget_seconds=720, lr=1e-3, warmup_steps=150, eval_every=200,
                               metric="rougeL")),
}


# ----------------------------------------------------------------------------------------------
# encoding and batches
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One encoded pair: source ids (unknown words as ``<unk>``), extended ids, the source's unknown
    words, and the summary's extended ids framed by ``<s>`` ... ``</s>``."""

    src: list[int]
    src_ext: list[int]
    oov: list[str]
    tgt: list[int]


def encode(vocab: WordVocab, text: str, summary: str | None, src_len: int, tgt_len: int) -> Example:
    """The example of ``text`` (its first ``src_len`` words, then ``</s>``) and ``summary``."""
    ids, ext, oov = vocab.encode_source(words(text)[:src_len])
    tgt = [] if summary is None else [BOS, *vocab.encode_target(words(summary)[:tgt_len], oov), EOS]
    return Example([*ids, EOS], [*ext, EOS], oov, tgt)


def _pad(rows: Sequence[list[int]]) -> Tensor:
    out = torch.full((len(rows), max(1, max(len(r) for r in rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out  # (B, T)


def collate(examples: Sequence[Example]) -> dict[str, Any]:
    """Padded ``src``, ``src_ext`` ``(B, S)``, ``tgt`` ``(B, T + 1)`` and ``n_ext`` (the most unknown words)."""
    return {"src": _pad([e.src for e in examples]), "src_ext": _pad([e.src_ext for e in examples]),
            "tgt": _pad([e.tgt for e in examples]) if examples[0].tgt else None,
            "n_ext": max(len(e.oov) for e in examples), "oov": [e.oov for e in examples]}


def _batches(examples: list[Example], batch_size: int) -> Callable[[torch.Generator], Iterator[dict[str, Any]]]:
    def make(gen: torch.Generator) -> Iterator[dict[str, Any]]:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[j] for j in order[i : i + batch_size]])

    return make


def _loss(model: Summarizer, batch: dict[str, Any]) -> tuple[Tensor, int]:
    src, tgt = batch["src"], batch["tgt"]  # (B, S), (B, T + 1)
    n_ext = batch["n_ext"] if model.copies else 0
    logp = model(src, src != PAD, tgt[:, :-1], batch["src_ext"], n_ext)  # (B, T, X)
    gold = tgt[:, 1:]  # (B, T)
    if not model.copies:
        gold = gold.masked_fill(gold >= model.config.vocab, UNK)
    loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), gold.reshape(-1), ignore_index=PAD)
    return loss, int((gold != PAD).sum())


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------


def _blocked(prefix: list[int], n: int = 3) -> set[int]:
    """Tokens that would repeat an n-gram already in ``prefix``."""
    if len(prefix) < n - 1:
        return set()
    tail = tuple(prefix[len(prefix) - n + 1 :])
    return {prefix[i + n - 1] for i in range(len(prefix) - n + 1) if tuple(prefix[i : i + n - 1]) == tail}


@torch.no_grad()
def greedy(model: Summarizer, batch: dict[str, Any], max_len: int, *,
           no_repeat: int = 3) -> tuple[Tensor, Tensor | None]:
    """Greedy summaries: extended ids ``(B, T <= max_len)`` and, for the pointer model, ``p_gen (B, T)``.
    ``<pad> <s> <unk>`` are never emitted, nor ``</s>`` first, nor a repeated ``no_repeat``-gram."""
    src, ext = batch["src"], batch["src_ext"]
    n_ext = batch["n_ext"] if model.copies else 0
    b = src.shape[0]
    state = model.start(src, src != PAD, ext, n_ext)
    tok = torch.full((b,), BOS, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    out: list[Tensor] = []
    gates: list[Tensor] = []
    seqs: list[list[int]] = [[] for _ in range(b)]
    for t in range(max_len):
        logp = model.step(state, tok).clone()  # (B, X)
        logp[:, [PAD, BOS, UNK]] = float("-inf")
        if t == 0:
            logp[:, EOS] = float("-inf")
        if no_repeat:
            for i in range(b):
                banned = _blocked(seqs[i], no_repeat)
                if banned:
                    logp[i, list(banned)] = float("-inf")
        tok = logp.argmax(-1).masked_fill(done, PAD)  # (B,)
        if model.copies:
            gates.append(model.last_cross["p_gen"][:, 0])
        out.append(tok)
        for i, k in enumerate(tok.tolist()):
            seqs[i].append(k)
        done |= tok == EOS
        if bool(done.all()):
            break
    ids = torch.stack(out, 1) if out else torch.full((b, 0), PAD, dtype=torch.long)
    return ids, (torch.stack(gates, 1) if gates else None)


class _Bound:
    """A summarizer with its batch's extended source ids bound: the ``start(src, src_mask)``,
    ``step``, ``reorder`` interface of :func:`~attnkit.apps.translation.decoding.beam_hypotheses`,
    which repeats every source row ``K`` times (rows ``b*K + j``)."""

    def __init__(self, model: Summarizer, src_ext: Tensor, n_ext: int):
        self.model, self.src_ext, self.n_ext = model, src_ext, n_ext

    def start(self, src: Tensor, src_mask: Tensor) -> dict[str, Any]:
        k = src.shape[0] // self.src_ext.shape[0]
        return self.model.start(src, src_mask, self.src_ext.repeat_interleave(k, 0), self.n_ext)

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:  # (B*K, X)
        return self.model.step(state, tokens)

    def reorder(self, state: dict[str, Any], index: Tensor) -> None:
        self.model.reorder(state, index)


def _rules(no_repeat: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Greedy's rules for beam search: no ``<unk>``, no ``</s>`` first, no repeated ``no_repeat``-gram."""

    def constrain(logp: Tensor, prefixes: Tensor) -> Tensor:  # (N, X), (N, t)
        logp[:, UNK] = float("-inf")
        if prefixes.shape[1] == 0:
            logp[:, EOS] = float("-inf")
        elif no_repeat:
            for i, row in enumerate(prefixes.tolist()):
                banned = _blocked(row, no_repeat)
                if banned:
                    logp[i, list(banned)] = float("-inf")
        return logp

    return constrain


@torch.no_grad()
def beam_search(model: Summarizer, batch: dict[str, Any], max_len: int, *, beam: int = 4,
                length_penalty: float = 1.0, no_repeat: int = 3) -> tuple[Tensor, Tensor]:
    """Beam-search summaries under greedy's rules, over the extended vocabulary (the pointer model's
    copies included): all ``beam`` hypotheses best first, extended ids ``(B, K, T <= max_len)``, and
    their scores ``log p / length ** length_penalty`` ``(B, K)``. ``beam=1`` gives greedy's summaries.
    Decoding is KV-cached; the cache rows follow the hypotheses they belong to."""
    if not length_penalty >= 0:
        raise AttnKitError(f"length_penalty must be a number >= 0; got {length_penalty}")
    src = batch["src"]
    n_ext = batch["n_ext"] if model.copies else 0
    ext = batch["src_ext"] if batch.get("src_ext") is not None else src
    return beam_hypotheses(_Bound(model, ext, n_ext), src, src != PAD, max_len, beam=beam,
                           length_penalty=length_penalty, constrain=_rules(no_repeat))


def decode(model: Summarizer, batch: dict[str, Any], max_len: int, *, beam: int = 1,
           length_penalty: float = 1.0) -> Tensor:
    """Summaries ``(B, T <= max_len)`` in extended ids: greedy when ``beam`` is 1, else the best beam."""
    if beam == 1:
        return greedy(model, batch, max_len)[0]
    return beam_search(model, batch, max_len, beam=beam, length_penalty=length_penalty)[0][:, 0]


def summarize(model: Summarizer, vocab: WordVocab, texts: Sequence[str], *, src_len: int, tgt_len: int,
              beam: int = 1, length_penalty: float = 1.0, batch_size: int = 128) -> list[str]:
    """Summaries of ``texts`` (each read up to its first ``src_len`` words; greedy when ``beam`` is 1)."""
    if beam < 1:
        raise AttnKitError(f"beam must be >= 1; got {beam}")
    model.eval()
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        batch = collate([encode(vocab, t, None, src_len, tgt_len) for t in texts[i : i + batch_size]])
        ids = decode(model, batch, tgt_len + 1, beam=beam, length_penalty=length_penalty)
        out.extend(" ".join(vocab.decode(row, oov)) for row, oov in zip(ids.tolist(), batch["oov"]))
    return out


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def _load_splits(data: str, preset: Preset) -> tuple[dict[str, list[SummaryPair]], dict[str, int]]:
    splits, counts = load_pairs(data)
    sizes = {"train": preset.n_train, "valid": preset.n_valid, "test": preset.n_test}
    return {k: _spread(v, sizes[k]) for k, v in splits.items()}, counts


def _spread(pairs: list[SummaryPair], n: int | None) -> list[SummaryPair]:
    """``n`` pairs spread evenly over ``pairs`` (sorted by source and key), so each source keeps its share."""
    if n is None or n >= len(pairs):
        return pairs
    step = len(pairs) / n
    return [pairs[int(i * step)] for i in range(n)]


def _config(kind: str, vocab: int, preset: Preset) -> SummConfig:
    sizes = preset.rnn if kind == "rnn" else preset.transformer
    return SummConfig(kind=kind, vocab=vocab, max_len=preset.src_len + preset.tgt_len + 4, **sizes)


def train(*, data: str = "all", model: str = "pointer", quick: bool = False, budget_minutes: float | None = None,
          max_steps: int | None = None, eval_every: int | None = None, out: str | Path | None = None, seed: int = 0,
          progress: bool = True, resume: bool = False,
          log: Callable[[str], None] = print) -> tuple[RunFolder, dict[str, Any]]:
    """Train one model and evaluate it on the test split; returns the run folder and its results."""
    if model not in MODELS:
        raise AttnKitError(f"--model {model!r} is not known; expected one of {', '.join(MODELS)}")
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not known; expected one of {', '.join(DATASETS)}")
    require_data(data)
    preset = PRESETS["quick" if quick else "full"]
    cfg = preset.train.overridden(seed=seed, progress=progress, budget_minutes=budget_minutes, max_steps=max_steps,
                                  eval_every=eval_every)
    RunFolder.refuse_existing(out, resume)
    t0 = time.perf_counter()
    splits, counts = _load_splits(data, preset)
    log(f"pairs per source: {', '.join(f'{k} {v}' for k, v in counts.items())}; "
        f"split sizes: {', '.join(f'{k} {len(v)}' for k, v in splits.items())}")
    run = RunFolder.create(TASK, model, out)
    vocab_path = run / "vocab.json"
    if resume and vocab_path.exists():
        vocab = WordVocab.load(vocab_path)
    else:
        vocab = WordVocab.build((t for p in splits["train"] for t in (p.text, p.summary)), preset.vocab)
        vocab.save(vocab_path)
    torch.manual_seed(seed)
    mcfg = _config(model, len(vocab), preset)
    net = build_model(mcfg)
    n_params = sum(p.numel() for p in net.parameters())
    write_json(run / "config.json", {"task": TASK, "data": data, "preset": "quick" if quick else "full",
                                     "model": mcfg.to_dict(), "train": asdict(cfg), "batch_size": preset.batch_size,
                                     "src_len": preset.src_len, "tgt_len": preset.tgt_len, "pairs_per_source": counts,
                                     "sizes": {k: len(v) for k, v in splits.items()}, "parameters": n_params})
    valid = splits["valid"]

    def evaluate(m: Summarizer) -> dict[str, float]:
        hyps = summarize(m, vocab, [p.text for p in valid], src_len=preset.src_len, tgt_len=preset.tgt_len)
        return rouge(hyps, [p.summary for p in valid])

    examples = [encode(vocab, p.text, p.summary, preset.src_len, preset.tgt_len) for p in splits["train"]]
    trainer = Trainer(net, cfg, run, batches=_batches(examples, preset.batch_size), loss_fn=_loss, evaluate=evaluate)
    return trainer.fit_and_evaluate(f"{model} on {data}: {len(examples)} pairs, vocabulary {len(vocab)}, {n_params:,} "
                                    "parameters", evaluate_run, started=t0, resume=resume, log=log)


# ----------------------------------------------------------------------------------------------
# a finished run
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained model with its vocabulary and configuration."""

    run: RunFolder
    config: dict[str, Any]
    model: Summarizer
    vocab: WordVocab

    def summarize(self, texts: Sequence[str], *, beam: int = 1, length_penalty: float = 1.0) -> list[str]:
        """Summaries of ``texts`` (greedy when ``beam`` is 1)."""
        return summarize(self.model, self.vocab, texts, src_len=self.config["src_len"], tgt_len=self.config["tgt_len"],
                         beam=beam, length_penalty=length_penalty)


def load_run(path: str | Path) -> LoadedRun:
    """The model of a run folder, in eval mode, with the best weights."""
    run, config = RunFolder.open_task(path, TASK)
    vocab = WordVocab.load(run / "vocab.json")
    model = build_model(SummConfig(**config["model"]))
    model.load_state_dict(load_weights(run / "model.safetensors"))
    return LoadedRun(run, config, model.eval(), vocab)


def _abstractiveness(hyps: Sequence[str], sources: Sequence[str]) -> dict[str, float]:
    return {"novel_1gram": novel_ngram_rate(hyps, sources, 1), "novel_2gram": novel_ngram_rate(hyps, sources, 2),
            "copy_rate": copy_rate(hyps, sources)}


def _copy_stats(lr: LoadedRun, test: Sequence[SummaryPair], beam: int = 1,
                length_penalty: float = 1.0) -> dict[str, float] | None:
    """Mean ``p_gen`` over emitted words (teacher-forced on the model's own summaries), and the share
    of emitted words outside the vocabulary (only copying makes them)."""
    if not lr.model.copies:
        return None
    gates, oov_words, total = [], 0, 0
    src_len, tgt_len = lr.config["src_len"], lr.config["tgt_len"]
    for i in range(0, len(test), 128):
        batch = collate([encode(lr.vocab, p.text, None, src_len, tgt_len) for p in test[i : i + 128]])
        ids = decode(lr.model, batch, tgt_len + 1, beam=beam, length_penalty=length_penalty)  # (B, T)
        tgt_in = torch.cat((torch.full((len(ids), 1), BOS, dtype=torch.long), ids[:, :-1]), dim=1)
        with torch.no_grad():
            p_gen = lr.model.cross_attention(batch["src"], batch["src"] != PAD, tgt_in, batch["src_ext"],
                                             batch["n_ext"])["p_gen"]  # (B, T)
        keep = (ids != PAD) & (ids != EOS)
        gates.append(p_gen[keep])
        oov_words += int((ids[keep] >= len(lr.vocab)).sum())
        total += int(keep.sum())
    return {"mean_p_gen": float(torch.cat(gates).mean()) if total else float("nan"),
            "oov_word_share": oov_words / total if total else 0.0}


def results_name(beam: int = 1, length_penalty: float = 1.0) -> str:
    """``results.json`` for greedy decoding, else ``results-beam<N>[-lp<A>].json``."""
    if beam == 1:
        return "results.json"
    return f"results-beam{beam}" + ("" if length_penalty == 1.0 else f"-lp{length_penalty:g}") + ".json"


def evaluate_run(path: str | Path | RunFolder, *, beam: int = 1, length_penalty: float = 1.0,
                 log: Callable[[str], None] = print, train_result: TrainResult | None = None,
                 setup_seconds: float | None = None, pictures: bool = True) -> dict[str, Any]:
    """Evaluate a run on its held-out test split against the lead baseline; returns the results and
    writes them to ``results.json`` with pictures (greedy, ``beam`` 1) or, for beam search, to
    ``results-beam<N>[-lp<A>].json`` (no pictures), leaving the greedy results in place."""
    if beam < 1:
        raise AttnKitError(f"--beam must be >= 1; got {beam}")
    if not length_penalty >= 0:
        raise AttnKitError(f"--length-penalty must be a number >= 0; got {length_penalty}")
    lr = load_run(path.path if isinstance(path, RunFolder) else path)
    run, config = lr.run, lr.config
    preset = PRESETS[config["preset"]]
    splits, counts = _load_splits(config["data"], preset)
    test = splits["test"]
    t0 = time.perf_counter()
    hyps = lr.summarize([p.text for p in test], beam=beam, length_penalty=length_penalty)
    decode_seconds = time.perf_counter() - t0
    refs, sources = [p.summary for p in test], [" ".join(words(p.text)[: config["src_len"]]) for p in test]
    lead_words = round(sum(len(words(p.summary)) for p in splits["train"]) / max(1, len(splits["train"])))
    leads = [lead(p.text, lead_words) for p in test]
    by_source = {}
    for source in sorted({p.source for p in test}):
        idx = [i for i, p in enumerate(test) if p.source == source]
        by_source[source] = {"n": len(idx), "model": rouge([hyps[i] for i in idx], [refs[i] for i in idx]),
                             "lead": rouge([leads[i] for i in idx], [refs[i] for i in idx])}
    state = read_json(run / "trainer_state.json") if (run / "trainer_state.json").exists() else {}
    before = {}
    if (run / "results.json").exists():
        before = read_json(run / "results.json").get("train", {}) or {}
    evals = [e for e in run.metrics() if e.get("event") == "eval"]  # metrics.jsonl
    reached = {}
    for th in THRESHOLDS:
        first = next((e for e in evals if e.get("rougeL", -1) >= th), None)
        reached[str(th)] = None if first is None else {"step": first["step"], "seconds": first["seconds"]}
    results: dict[str, Any] = {
        "task": TASK, "data": config["data"], "model": config["model"]["kind"], "preset": config["preset"],
        "parameters": config["parameters"], "pairs_per_source": counts,
        "test": {"n": len(test), **rouge(hyps, refs), **_abstractiveness(hyps, sources)},
        "lead": {"words": lead_words, **rouge(leads, refs), **_abstractiveness(leads, sources)},
        "references": _abstractiveness(refs, sources),
        "by_source": by_source,
        "copy": _copy_stats(lr, test, beam, length_penalty),
        "decoding": {"beam": beam, "length_penalty": length_penalty, "no_repeat_ngram": 3,
                     "seconds": round(decode_seconds, 3)},
        "train": {"steps": state.get("step"), "seconds": state.get("seconds"),
                  "best_valid_rougeL": state.get("best"), "best_step": state.get("best_step"),
                  "stopped": before.get("stopped") if train_result is None else train_result.stopped,
                  "setup_seconds": before.get("setup_seconds") if setup_seconds is None else round(setup_seconds, 2)},
        "time_to_valid_rougeL": reached,
        "examples": [{"key": p.key, "text": " ".join(words(p.text)[:40]), "ref": p.summary, "hyp": h}
                     for p, h in list(zip(test, hyps))[:: max(1, len(test) // 8)][:8]],
    }
    if pictures and beam == 1:
        results["pictures"] = _pictures(lr, test)
    write_json(run / results_name(beam, length_penalty), results)
    log(summary(results))
    return results


def _pictures(lr: LoadedRun, test: Sequence[SummaryPair], n: int = 3) -> list[str]:
    """Cross-attention and p_gen pictures of ``n`` held-out pairs (one per source where possible)."""
    try:
        from . import pictures
    except ModuleNotFoundError:
        return []
    chosen: list[SummaryPair] = []
    for source in ("docstrings", "manpages", "dpkg"):
        fit = [p for p in test if p.source == source and 15 <= len(words(p.text)) <= 45]
        if fit:
            chosen.append(fit[len(fit) // 2])
    paths = []
    for i, p in enumerate(chosen[:n]):
        made = pictures.copy_picture(lr, p.text, lr.run / f"attention-{i}-{p.source}.png")
        if made is not None:
            paths.append(made.name)
    return paths


def summary(results: dict[str, Any]) -> str:
    """The results of one run as a few printable lines."""
    t, ld, tr = results["test"], results["lead"], results["train"]
    dec = results.get("decoding", {})
    how = "greedy" if dec.get("beam", 1) == 1 else f"beam {dec['beam']}, length penalty {dec['length_penalty']:g}"
    lines = [f"{results['model']} on {results['data']}, test n={t['n']} ({how}): ROUGE-1 {t['rouge1']:.1f}  "
             f"ROUGE-2 {t['rouge2']:.1f}  ROUGE-L {t['rougeL']:.1f}"
             + (f"  ({tr['steps']} steps, {tr['seconds']:.0f} s)" if tr.get("seconds") else ""),
             f"  lead-{ld['words']} baseline: ROUGE-1 {ld['rouge1']:.1f}  ROUGE-2 {ld['rouge2']:.1f}  "
             f"ROUGE-L {ld['rougeL']:.1f}",
             f"  novel 1-grams {100 * t['novel_1gram']:.1f}%  novel 2-grams {100 * t['novel_2gram']:.1f}%  "
             f"copy rate {100 * t['copy_rate']:.1f}%  (references: novel 2-grams "
             f"{100 * results['references']['novel_2gram']:.1f}%)",
             "  by source: " + ", ".join(f"{k} n={v['n']} ROUGE-L {v['model']['rougeL']:.1f} "
                                         f"(lead {v['lead']['rougeL']:.1f})" for k, v in results["by_source"].items())]
    if results.get("copy"):
        c = results["copy"]
        lines.append(f"  mean p_gen {c['mean_p_gen']:.2f}; words outside the vocabulary (copied) "
                     f"{100 * c['oov_word_share']:.1f}% of output")
    return "\n".join(lines)
