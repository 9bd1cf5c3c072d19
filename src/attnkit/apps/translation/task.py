"""The translation task end to end: data, vocabulary, model, training with the shared trainer,
evaluation on held-out data (with the trivial baselines), and translating new text from a run.

Presets: ``quick`` (the test suite's size: well under a minute on 2 cores) and ``full``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import RunFolder, TrainConfig, Trainer, TrainResult, load_weights, read_json, write_json
from .data import BUCKETS, DATASETS, NUMBER_LANGS, Pair, length_bucket, number_list_pairs, number_pairs
from .decoding import beam_search, greedy
from .metrics import alignment_error, by_bucket, corpus_scores, gold_alignment, require_sacrebleu
from .models import MODELS, ModelConfig, Translator, build_model
from .tokenizer import PAD, SubwordTokenizer

__all__ = ["TASK", "Preset", "PRESETS", "BIBLE_PRESETS", "preset_of", "valid_metric", "load_data", "make_loss",
           "train",
           "LoadedRun", "load_run", "translate",
           "evaluate_run", "THRESHOLDS"]

TASK = "translation"
THRESHOLDS = (0.5, 0.9, 0.95, 0.99)  # exact-match levels whose first step and second are reported
BIBLE_THRESHOLDS = (20.0, 30.0, 35.0, 40.0)  # chrF levels, for the bible data


@dataclass(frozen=True)
class Preset:
    """Sizes of one run: data, vocabulary, model and training."""

    n_train: int
    n_valid: int
    n_test: int | None  # None: the whole held-out split
    vocab: int
    batch_size: int
    rnn: dict[str, Any]  # ModelConfig fields for the RNNs
    transformer: dict[str, Any]  # ModelConfig fields for the transformers
    train: TrainConfig
    max_words: int | None = None  # bible: the longest training / validation verse, in English words
    label_smoothing: float = 0.0  # of the training cross-entropy, in [0, 1)
    # per model family ("rnn", "transformer"): Preset fields (batch_size, vocab, label_smoothing) and
    # TrainConfig fields (lr, warmup_steps, ...) that replace the shared ones for that family
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_label_smoothing(self.label_smoothing)
        known = {f.name for f in fields(Preset)} | {f.name for f in fields(TrainConfig)}
        for family, recipe in self.recipes.items():
            if family not in ("rnn", "transformer"):
                raise AttnKitError(f"Preset.recipes key {family!r} is not known; expected 'rnn' or 'transformer'")
            unknown = sorted((set(recipe) - known) | (set(recipe) & {"recipes", "rnn", "transformer", "train"}))
            if unknown:
                raise AttnKitError(f"Preset.recipes[{family!r}] has unknown fields {unknown}; expected Preset "
                                   "or TrainConfig fields")

    def for_model(self, kind: str) -> Preset:
        """This preset with the recipe of ``kind``'s family (RNN or transformer) applied."""
        recipe = dict(self.recipes.get("rnn" if kind.startswith("rnn") else "transformer", {}))
        train_fields = {f.name for f in fields(TrainConfig)}
        cfg = replace(self.train, **{k: v for k, v in recipe.items() if k in train_fields})
        return replace(self, train=cfg, recipes={}, **{k: v for k, v in recipe.items() if k not in train_fields})


def check_label_smoothing(value: float, name: str = "label_smoothing") -> float:
    """``value`` if it is a label smoothing in [0, 1); an :class:`AttnKitError` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise AttnKitError(f"{name} must be a number in [0, 1); got {value!r}")
    return float(value)


PRESETS = {
    "quick": Preset(3000, 150, 300, 300, 32, dict(d_model=64, emb_dim=32, dropout=0.0),
                    dict(d_model=64, layers=2, heads=4, ff=128, dropout=0.0),
                    TrainConfig(max_steps=400, budget_seconds=25, lr=3e-3, warmup_steps=30, eval_every=100,
                                progress=False)),
    "full": Preset(50000, 500, 2000, 400, 64, dict(d_model=128, emb_dim=64, dropout=0.1),
                   dict(d_model=128, layers=3, heads=4, ff=512, dropout=0.1),
                   TrainConfig(max_steps=6000, budget_seconds=480, lr=1e-3, warmup_steps=200, eval_every=250)),
}


# the bible: 29.6k training verses (27k of at most 40 words); the full preset fits 30 minutes on 2 cores
BIBLE_PRESETS = {
    "quick": Preset(3000, 100, 300, 1000, 32, dict(d_model=64, emb_dim=32, dropout=0.0),
                    dict(d_model=64, layers=2, heads=4, ff=128, dropout=0.0),
                    TrainConfig(max_steps=600, budget_seconds=30, lr=3e-3, warmup_steps=30, eval_every=200,
                                progress=False), max_words=12),
    "full": Preset(30000, 270, None, 8000, 48, dict(d_model=256, emb_dim=128, dropout=0.1),
                   dict(d_model=128, layers=3, heads=4, ff=512, dropout=0.1),
                   TrainConfig(max_steps=100000, budget_seconds=1380, lr=1e-3, warmup_steps=400, eval_every=500,
                               schedule="cosine", min_lr_ratio=0.05),
                   max_words=40,
                   # chosen by 4-minute trials on validation chrF (docs/apps/translation.md)
                   recipes={"transformer": dict(lr=3e-3, warmup_steps=100, label_smoothing=0.1, vocab=4000),
                            "rnn": dict(lr=3e-3, warmup_steps=100, label_smoothing=0.1, vocab=4000)}),
}


def preset_of(data: str, size: str) -> Preset:
    """The preset ``size`` (``"quick"`` or ``"full"``) of the data set ``data``."""
    return (BIBLE_PRESETS if data == "bible" else PRESETS)[size]


def valid_metric(data: str) -> str:
    """The validation metric that training maximises: chrF on the bible, exact match on numbers."""
    return "chrf" if data == "bible" else "exact"


def load_data(data: str, lang: str, preset: Preset, seed: int = 0) -> dict[str, list[Pair]]:
    """Train, valid and test pairs of ``data`` (held-out numbers, or held-out books, never in training)."""
    if data not in DATASETS:
        raise AttnKitError(f"--data {data!r} is not available; expected one of {', '.join(DATASETS)}")
    if data == "bible":
        if lang not in ("es", "fr"):  # "fr" is the command line's default language of number words
            raise AttnKitError(f"--lang {lang!r} is not available for the bible; expected es")
        from .data import bible_pairs

        return {"train": bible_pairs("train", preset.n_train, max_words=preset.max_words, seed=seed),
                "valid": bible_pairs("valid", preset.n_valid, max_words=preset.max_words, seed=seed),
                "test": bible_pairs("test", preset.n_test, seed=seed)}
    if lang not in NUMBER_LANGS:
        raise AttnKitError(f"--lang {lang!r} is not available for numbers; expected one of {', '.join(NUMBER_LANGS)}")
    sizes = {"train": preset.n_train, "valid": preset.n_valid, "test": preset.n_test}
    load = number_pairs if data == "numbers" else number_list_pairs
    return {split: load(lang, split, n, seed=seed) for split, n in sizes.items()}


# ----------------------------------------------------------------------------------------------
# batches and loss
# ----------------------------------------------------------------------------------------------


def _pad(rows: Sequence[list[int]]) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out  # (B, T)


def _encoded(tok: SubwordTokenizer, pairs: Sequence[Pair]) -> list[tuple[list[int], list[int]]]:
    from .tokenizer import BOS, EOS

    return [(tok.encode(p.src) + [EOS], [BOS] + tok.encode(p.tgt) + [EOS]) for p in pairs]


def _batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, pool: int = 32):
    """Batches of ``batch_size`` pairs in a random order each pass, each batch drawn from pairs of
    similar length: a shuffled pool of ``pool`` batches is sorted by source length before it is cut,
    so little of a padded batch is padding, and the batches are shuffled again."""
    def make(gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(encoded), generator=gen).tolist()
        batches: list[list[int]] = []
        for p in range(0, len(order), batch_size * pool):
            part = sorted(order[p : p + batch_size * pool], key=lambda j: (len(encoded[j][0]), len(encoded[j][1])))
            batches += [part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            chunk = [encoded[j] for j in batches[b]]
            yield _pad([s for s, _ in chunk]), _pad([t for _, t in chunk])

    return make


def make_loss(label_smoothing: float = 0.0) -> Callable[[Translator, tuple[Tensor, Tensor]], tuple[Tensor, int]]:
    """The training loss: token cross-entropy over the non-padding targets, with ``label_smoothing``
    (in [0, 1)) of each target's probability spread evenly over the vocabulary. The function takes
    ``(model, (src (B, S), tgt (B, T + 1)))`` and returns ``(loss, target tokens)``."""
    smoothing = check_label_smoothing(label_smoothing)

    def loss_fn(model: Translator, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        src, tgt = batch  # (B, S), (B, T + 1)
        logits = model(src, src != PAD, tgt[:, :-1])  # (B, T, V)
        gold = tgt[:, 1:]  # (B, T)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=PAD,
                               label_smoothing=smoothing)
        return loss, int((gold != PAD).sum())

    return loss_fn


_loss = make_loss(0.0)


# ----------------------------------------------------------------------------------------------
# translating
# ----------------------------------------------------------------------------------------------


def _max_len(src: Tensor, config: ModelConfig) -> int:
    return min(config.max_len - 1, 2 * src.shape[1] + 10)


def translate(model: Translator, tok: SubwordTokenizer, texts: Sequence[str], *, beam: int = 1,
              length_penalty: float = 1.0, batch_size: int = 256, use_cache: bool = True) -> list[str]:
    """Translations of ``texts`` (greedy when ``beam`` is 1)."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        src, mask = tok.batch(texts[i : i + batch_size], max_len=model.config.max_len)
        n = _max_len(src, model.config)
        if beam == 1:
            ids = greedy(model, src, mask, n, use_cache=use_cache)
        else:
            ids = beam_search(model, src, mask, n, beam=beam, length_penalty=length_penalty)
        out.extend(tok.decode(row) for row in ids.tolist())
    return out


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def _model_config(kind: str, vocab: int, preset: Preset) -> ModelConfig:
    sizes = preset.rnn if kind.startswith("rnn") else preset.transformer
    return ModelConfig(kind=kind, vocab=vocab, **sizes)


def train(*, data: str = "numbers", model: str = "transformer", lang: str = "fr", quick: bool = False,
          budget_minutes: float | None = None, max_steps: int | None = None, target: float | None = None,
          eval_every: int | None = None,
          out: str | Path | None = None, seed: int = 0, progress: bool = True, resume: bool = False,
          log: Callable[[str], None] = print) -> tuple[RunFolder, dict[str, Any]]:
    """Train one model and evaluate it on the test set; returns the run folder and its results."""
    if model not in MODELS:
        raise AttnKitError(f"--model {model!r} is not known; expected one of {', '.join(MODELS)}")
    require_sacrebleu()
    preset = preset_of(data, "quick" if quick else "full").for_model(model)
    if data == "bible":
        lang = "es"
    cfg = preset.train.overridden(seed=seed, progress=progress,
                                  budget_minutes=budget_minutes, max_steps=max_steps, target=target,
                                  eval_every=eval_every)
    RunFolder.refuse_existing(out, resume)
    t0 = time.perf_counter()
    splits = load_data(data, lang, preset, seed=0)
    run = RunFolder.create(TASK, model, out)
    tok_path = run / "tokenizer.json"
    if resume and tok_path.exists():
        tok = SubwordTokenizer.load(tok_path)
    else:
        tok = SubwordTokenizer.train((t for p in splits["train"] for t in (p.src, p.tgt)), preset.vocab)
        tok.save(tok_path)
    torch.manual_seed(seed)
    mcfg = _model_config(model, tok.vocab_size, preset)
    net = build_model(mcfg)
    write_json(run / "config.json", {"task": TASK, "data": data, "lang": lang, "preset": "quick" if quick else "full",
                                     "model": mcfg.to_dict(), "train": asdict(cfg), "batch_size": preset.batch_size,
                                     "vocab": preset.vocab, "label_smoothing": preset.label_smoothing,
                                     "sizes": {k: len(v) for k, v in splits.items()},
                                     "parameters": sum(p.numel() for p in net.parameters())})
    valid = splits["valid"]

    def evaluate(m: Translator) -> dict[str, float]:
        hyps = translate(m, tok, [p.src for p in valid])
        exact = sum(h == p.tgt for h, p in zip(hyps, valid)) / len(valid)
        if data != "bible":
            return {"exact": exact}
        return {"exact": exact, "chrf": corpus_scores(hyps, [p.tgt for p in valid])["chrf"]}

    batches = _batches(_encoded(tok, splits["train"]), preset.batch_size)
    trainer = Trainer(net, replace(cfg, metric=valid_metric(data)), run, batches=batches,
                      loss_fn=make_loss(preset.label_smoothing),
                      evaluate=evaluate)
    return trainer.fit_and_evaluate(f"{model} on {data} (en->{lang}): {len(splits['train'])} pairs, "
                                    f"{sum(p.numel() for p in net.parameters()):,} parameters", evaluate_run,
                                    started=t0, resume=resume, log=log)


# ----------------------------------------------------------------------------------------------
# a finished run
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained model with its tokenizer and configuration."""

    run: RunFolder
    config: dict[str, Any]
    model: Translator
    tokenizer: SubwordTokenizer


def load_run(path: str | Path) -> LoadedRun:
    """The model of a run folder, in eval mode, with the best weights."""
    run, config = RunFolder.open_task(path, TASK)
    tok = SubwordTokenizer.load(run / "tokenizer.json")
    model = build_model(ModelConfig(**config["model"]))
    model.load_state_dict(load_weights(run / "model.safetensors"))
    return LoadedRun(run, config, model.eval(), tok)


def _baselines(splits_train: Sequence[Pair], test: Sequence[Pair]) -> dict[str, dict[str, Any]]:
    """Copy the input, and always answer the most frequent training target."""
    refs = [p.tgt for p in test]
    frequent = Counter(p.tgt for p in splits_train).most_common(1)[0][0]
    out = {}
    for name, hyps in (("copy-input", [p.src for p in test]), ("most-frequent", [frequent] * len(test))):
        s = corpus_scores(hyps, refs)
        out[name] = {k: s[k] for k in ("exact", "bleu", "chrf")}
    return out


def _alignment_scores(lr: LoadedRun, pairs: Sequence[Pair], batch: int = 128) -> dict[str, Any] | None:
    """Argmax alignment error of cross-attention on pairs whose alignment is known, teacher-forced
    on the reference: per layer and head, per layer averaged over heads, overall mean."""
    from .tokenizer import BOS, EOS

    tok, model = lr.tokenizer, lr.model
    pairs = [p for p in pairs if p.spans]
    if not pairs:
        return None
    totals: dict[str, list[int]] = {}
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        enc = [(tok.encode_with_offsets(p.src), tok.encode_with_offsets(p.tgt)) for p in chunk]
        src = _pad([s[0] + [EOS] for s, _ in enc])
        tgt_in = _pad([[BOS] + t[0] for _, t in enc])
        with torch.no_grad():
            w = model.alignments(src, src != PAD, tgt_in)  # (L, H, B, T, S)
        if w is None:
            return None
        n_layers, n_heads = w.shape[:2]
        for b, (p, (s, t)) in enumerate(zip(chunk, enc)):
            gold = gold_alignment(p, s[1], t[1])
            views = {f"layer{layer}.head{h}": w[layer, h, b] for layer in range(n_layers) for h in range(n_heads)}
            views.update({f"layer{layer}.mean": w[layer, :, b].mean(0) for layer in range(n_layers)})
            for name, m in views.items():
                e, n = alignment_error(m, gold)
                acc = totals.setdefault(name, [0, 0])
                acc[0] += e
                acc[1] += n
    rates = {name: e / n for name, (e, n) in totals.items() if n}
    best = min(rates, key=rates.get)
    means = {k: v for k, v in rates.items() if k.endswith(".mean")}
    return {"pairs": len(pairs), "by_view": rates, "best_view": best, "best": rates[best],
            "last_layer_mean": means[max(means)]}


def evaluate_run(path: str | Path | RunFolder, *, beam: int = 1, length_penalty: float = 1.0,
                 encoder: str | None = None, log: Callable[[str], None] = print,
                 train_result: TrainResult | None = None, setup_seconds: float | None = None,
                 pictures: bool = True) -> dict[str, Any]:
    """Evaluate a run on its held-out test set; writes ``results.json`` (and pictures) and returns it.

    ``encoder`` (``"sparse"`` or ``"lsh"``; transformer runs only) runs the same weights with the
    encoder's attention done that way instead, and writes ``results-encoder-<kind>.json``.
    """
    lr = load_run(path.path if isinstance(path, RunFolder) else path)
    run, config = lr.run, lr.config
    if encoder is not None:
        from .models import ENCODER_ATTENTION, TransformerTranslator, with_encoder_attention

        kinds = {v: k for k, v in ENCODER_ATTENTION.items()}
        if encoder not in kinds:
            raise AttnKitError(f"--encoder {encoder!r} is not known; expected one of {', '.join(kinds)}")
        if not isinstance(lr.model, TransformerTranslator):
            raise AttnKitError(f"--encoder needs a transformer run; {str(run.path)!r} is a "
                               f"{config['model']['kind']!r} run")
        lr = LoadedRun(run, config, with_encoder_attention(lr.model, kinds[encoder]).eval(), lr.tokenizer)
        pictures = False
    preset = preset_of(config["data"], config["preset"]).for_model(config["model"]["kind"])
    splits = load_data(config["data"], config["lang"], preset, seed=0)
    test = splits["test"]
    t0 = time.perf_counter()
    hyps = translate(lr.model, lr.tokenizer, [p.src for p in test], beam=beam, length_penalty=length_penalty)
    decode_seconds = time.perf_counter() - t0
    scores = corpus_scores(hyps, [p.tgt for p in test])
    state = read_json(run / "trainer_state.json") if (run / "trainer_state.json").exists() else {}
    before = read_json(run / "results.json").get("train", {}) if (run / "results.json").exists() else {}
    evals = state.get("evals", [])
    reached = {}
    metric = valid_metric(config["data"])
    for th in BIBLE_THRESHOLDS if config["data"] == "bible" else THRESHOLDS:
        first = next((e for e in evals if e.get(metric, -1) >= th), None)
        reached[str(th)] = None if first is None else {"step": first["step"], "seconds": first["seconds"]}
    results: dict[str, Any] = {
        "task": TASK, "data": config["data"], "lang": config["lang"], "model": lr.model.config.kind,
        "trained_as": config["model"]["kind"],
        "preset": config["preset"], "parameters": config["parameters"], "decoding": {"beam": beam,
        "length_penalty": length_penalty, "seconds": round(decode_seconds, 3)},
        "test": {"n": len(test), **scores},
        "by_length": by_bucket(test, hyps, lambda w: length_bucket(w, BUCKETS[config["data"]])),
        "baselines": _baselines(splits["train"], test),
        "train": {"steps": state.get("step"), "seconds": state.get("seconds"),
                  "target_tokens_per_second": (state["items"] / state["seconds"]) if state.get("seconds") else None,
                  f"best_valid_{metric}": state.get("best"), "best_step": state.get("best_step"),
                  "stopped": before.get("stopped") if train_result is None else train_result.stopped,
                  "setup_seconds": before.get("setup_seconds") if setup_seconds is None else round(setup_seconds, 2)},
        f"time_to_valid_{metric}": reached,
        "alignment_error": _alignment_scores(lr, test),
        "examples": [{"src": p.src, "ref": p.tgt, "hyp": h} for p, h in list(zip(test, hyps))[:8]],
    }
    if pictures:
        results["pictures"] = _pictures(lr, test)
    write_json(run / ("results.json" if encoder is None else f"results-encoder-{encoder}.json"), results)
    log(summary(results))
    return results


def _pictures(lr: LoadedRun, test: Sequence[Pair], n: int = 3) -> list[str]:
    """Alignment heatmaps of ``n`` held-out pairs (model's own output), saved in the run folder."""
    try:
        from . import pictures
    except ModuleNotFoundError:
        return []
    rng = random.Random(0)
    chosen = sorted((p for p in test if 6 <= p.src_words <= 30), key=lambda p: p.key)
    chosen = rng.sample(chosen, min(n, len(chosen))) if chosen else list(test[:n])
    paths = []
    for i, p in enumerate(chosen):
        made = pictures.translation_alignment(lr.model, lr.tokenizer, p.src, lr.run / f"alignment-{i}.png")
        paths.extend(str(x.name) for x in made)
    return paths


def summary(results: dict[str, Any]) -> str:
    """The results of one run as a few printable lines."""
    t, tr = results["test"], results["train"]
    lines = [f"{results['model']} on {results['data']} (en->{results['lang']}), test n={t['n']}: "
             f"exact {100 * t['exact']:.1f}%  chrF {t['chrf']:.1f}  BLEU {t['bleu']:.1f}"
             + (f"  ({tr['steps']} steps, {tr['seconds']:.0f} s)" if tr.get("seconds") else ""),
             "  " + t["chrf_signature"], "  " + t["bleu_signature"],
             "  by source length (words): " + ", ".join(f"{k}: {100 * v['exact']:.1f}% chrF {v['chrf']:.1f} n={v['n']}"
                                                      for k, v in results["by_length"].items()),
             "  baselines: " + ", ".join(f"{k} exact {100 * v['exact']:.1f}% chrF {v['chrf']:.1f}"
                                         for k, v in results["baselines"].items())]
    al = results.get("alignment_error")
    if al:
        lines.append(f"  alignment error (attention argmax outside the known component): best {al['best_view']} "
                     f"{100 * al['best']:.1f}%, last layer mean {100 * al['last_layer_mean']:.1f}%")
    return "\n".join(lines)
