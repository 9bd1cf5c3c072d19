"""The captioning task end to end: scenes, the captioners of :mod:`.captioner` trained with the
shared trainer, evaluation on held-out scenes (BLEU-4 with sacrebleu, CIDEr-D, relation accuracy
against the boxes; the most frequent training caption as the trivial baseline), the "show, attend
and tell" pictures, and captioning a new canvas from a run.

Presets: ``quick`` (the test suite's size: well under a minute on 2 cores) and ``full``; both give
the two models the same conv-BN-ReLU patch stem (``stem`` of :class:`.captioner.CaptionConfig`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AttnKitError
from ..trainer import RunFolder, TrainConfig, TrainResult, load_weights, read_json, write_json
from ..translation.decoding import beam_search, greedy
from ..translation.tokenizer import BOS, EOS, PAD
from .captioner import CAPTION_MODELS, CaptionConfig, Captioner, Vocabulary
from .cider import cider_d
from .common import SceneModel, ScenePreset, load_scenes, time_to_thresholds, train_on_scenes
from .scenes import Scene, relation_scores, stack_images

__all__ = ["TASK", "MODELS", "Preset", "PRESETS", "THRESHOLDS", "train", "LoadedRun", "load_run", "caption_images",
           "evaluate_run", "caption_picture", "summary"]

TASK = "caption"
MODELS = CAPTION_MODELS
THRESHOLDS = (0.5, 0.8, 0.9)  # validation relation-accuracy levels whose first step and second are reported
METRIC = "relation_accuracy"


Preset = ScenePreset

PRESETS = {
    "quick": Preset(2000, 150, 300, 32, dict(d_model=64, enc_layers=1, dec_layers=1, heads=4, ff=128,
                                             stem=(16, 32, 64)),
                    TrainConfig(max_steps=300, budget_seconds=120, lr=2e-3, warmup_steps=30, eval_every=100,
                                metric=METRIC, progress=False)),
    "full": Preset(20000, 400, 2000, 32, dict(d_model=96, enc_layers=2, dec_layers=2, heads=4, ff=192, dropout=0.1,
                                              stem=(32, 64, 96)),
                   TrainConfig(max_steps=30000, budget_seconds=25 * 60, lr=1e-3, warmup_steps=200, eval_every=500,
                               metric=METRIC, schedule="cosine", min_lr_ratio=0.05)),
}


# ----------------------------------------------------------------------------------------------
# batches, loss, captioning
# ----------------------------------------------------------------------------------------------


def _targets(vocab: Vocabulary, captions: Sequence[str]) -> Tensor:
    rows = [[BOS, *vocab.encode(c), EOS] for c in captions]
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out  # (B, T + 1)


def _batches(images: Tensor, targets: Tensor, batch_size: int) -> Callable[[torch.Generator], Iterator]:
    def make(gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i: i + batch_size]
            tgt = targets[idx]
            yield images[idx], tgt[:, : int((tgt != PAD).sum(1).max())]

    return make


def _loss(model: Captioner, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
    images, tgt = batch  # (B, 1, S, S), (B, T + 1)
    logits = model(images, None, tgt[:, :-1])  # (B, T, V)
    gold = tgt[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=PAD)
    return loss, int((gold != PAD).sum())


@torch.no_grad()
def caption_images(model: Captioner, vocab: Vocabulary, images: Tensor, *, beam: int = 1,
                   length_penalty: float = 1.0, batch_size: int = 256) -> list[str]:
    """Captions of ``images (B, 1, S, S)`` in ``[0, 1]`` (greedy when ``beam`` is 1, KV-cached)."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size]
        mask = torch.ones(len(x), 1, dtype=torch.bool)  # every patch is real (read by beam search only)
        n = model.config.max_len
        ids = greedy(model, x, mask, n) if beam == 1 else beam_search(model, x, mask, n, beam=beam,
                                                                      length_penalty=length_penalty)
        out.extend(vocab.decode(row) for row in ids.tolist())
    return out


def _scores(hyps: Sequence[str], scenes: Sequence[Scene]) -> dict[str, Any]:
    from sacrebleu.metrics import BLEU

    refs = [s.caption for s in scenes]
    bleu = BLEU()
    b = bleu.corpus_score(list(hyps), [refs])
    return {"n": len(scenes), **relation_scores(hyps, scenes), "bleu4": b.score,
            "cider_d": cider_d(hyps, [[r] for r in refs])[0], "bleu_signature": str(bleu.get_signature())}


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def _check_data(data: str) -> None:
    if data != "scenes":
        raise AttnKitError(f"--data {data!r} is not available for captioning; expected scenes")


def train(*, data: str = "scenes", model: str = "attention", quick: bool = False,
          budget_minutes: float | None = None, max_steps: int | None = None, eval_every: int | None = None,
          target: float | None = None, out: str | Path | None = None, seed: int = 0, progress: bool = True,
          resume: bool = False, log: Callable[[str], None] = print) -> tuple[RunFolder, dict[str, Any]]:
    """Train one captioner and evaluate it on held-out scenes; returns the run folder and its results."""
    _check_data(data)
    if model not in MODELS:
        raise AttnKitError(f"--model {model!r} is not known; expected one of {', '.join(MODELS)}")
    vocab = Vocabulary()

    def setup(train_scenes: list[Scene], valid: list[Scene]) -> SceneModel:
        mcfg = CaptionConfig(kind=model, vocab=len(vocab), **preset.model)
        net = Captioner(mcfg)
        valid_images = stack_images(valid)

        def evaluate(m: Captioner) -> dict[str, float]:
            s = relation_scores(caption_images(m, vocab, valid_images), valid)
            return {k: round(v, 5) for k, v in s.items()}

        frequent = Counter(s.caption for s in train_scenes).most_common(1)[0][0]
        batches = _batches(stack_images(train_scenes), _targets(vocab, [s.caption for s in train_scenes]),
                           preset.batch_size)
        return SceneModel(net, mcfg.to_dict(), {"most_frequent_caption": frequent}, batches, _loss, evaluate)

    preset = PRESETS["quick" if quick else "full"]
    return train_on_scenes(TASK, "captioner", data=data, model=model, preset=preset, quick=quick, setup=setup,
                           evaluate_run=evaluate_run, budget_minutes=budget_minutes, max_steps=max_steps,
                           eval_every=eval_every, target=target, out=out, seed=seed, progress=progress,
                           resume=resume, log=log)


# ----------------------------------------------------------------------------------------------
# a finished run
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained captioner with its vocabulary and configuration."""

    run: RunFolder
    config: dict[str, Any]
    model: Captioner
    vocab: Vocabulary

    @property
    def side(self) -> int:
        """The canvas side the model reads."""
        return self.model.config.image


def load_run(path: str | Path) -> LoadedRun:
    """The captioner of a run folder, in eval mode, with the best weights."""
    run, config = RunFolder.open_task(path, TASK)
    model = Captioner(CaptionConfig(**config["model"]))
    model.load_state_dict(load_weights(run / "model.safetensors"))
    return LoadedRun(run, config, model.eval(), Vocabulary())


def caption_picture(lr: LoadedRun, image: Tensor, path: str | Path, *, caption: str | None = None) -> Path | None:
    """The "show, attend and tell" grid of one canvas ``(S, S)`` uint8 (the caption is generated
    when not given): each word's cross-attention, last decoder layer, mean of heads. None for the
    pooled model, which has no attention over the image."""
    from .scene_pictures import caption_attention_grid

    if not lr.model.attends:
        return None
    x = image[None, None].float() / 255.0
    if caption is None:
        caption = caption_images(lr.model, lr.vocab, x)[0]
    ids = lr.vocab.encode(caption) + [EOS]
    w = lr.model.cross_attention(x, torch.tensor([[BOS] + ids[:-1]]))  # (L, H, 1, T, N)
    words = [*lr.vocab.words(caption), "</s>"]
    return caption_attention_grid(image, words, w[-1, :, 0].mean(0), path,
                                  title=f"{caption}  (cross-attention of each word, last layer, mean of heads)")


def evaluate_run(path: str | Path | RunFolder, *, beam: int = 1, length_penalty: float = 1.0,
                 log: Callable[[str], None] = print, train_result: TrainResult | None = None,
                 setup_seconds: float | None = None, pictures: bool = True) -> dict[str, Any]:
    """Evaluate a run on its held-out test scenes; writes ``results.json`` (and pictures) and returns it."""
    run = path if isinstance(path, RunFolder) else RunFolder(path)
    lr = load_run(run.path)
    test = load_scenes("test", lr.config["sizes"]["test"])
    hyps = caption_images(lr.model, lr.vocab, stack_images(test), beam=beam, length_penalty=length_penalty)
    before = read_json(run / "results.json") if (run / "results.json").exists() else {}
    evals = train_result.evals if train_result is not None else [
        {k: v for k, v in r.items() if k != "event"} for r in run.metrics() if r.get("event") == "eval"]
    frequent = lr.config["most_frequent_caption"]
    results: dict[str, Any] = {
        "task": TASK, "model": lr.config["model"]["kind"], "preset": lr.config["preset"], "beam": beam,
        "parameters": lr.config["parameters"],
        "test": _scores(hyps, test),
        "baselines": {"most-frequent-caption": {"caption": frequent, **_scores([frequent] * len(test), test)}},
        "train": {"steps": train_result.steps if train_result else before.get("train", {}).get("steps"),
                  "seconds": round(train_result.seconds, 1) if train_result else before.get("train", {}).get("seconds"),
                  "stopped": train_result.stopped if train_result else before.get("train", {}).get("stopped"),
                  "setup_seconds": round(setup_seconds, 1) if setup_seconds is not None
                  else before.get("train", {}).get("setup_seconds")},
        f"time_to_valid_{METRIC}": time_to_thresholds(evals, METRIC, THRESHOLDS),
        "examples": [{"ref": s.caption, "hyp": h} for s, h in list(zip(test, hyps))[:8]],
    }
    if pictures and lr.model.attends:
        made = []
        for i, s in enumerate([s for s in test if len(s.labels) >= 3][:2]):
            p = caption_picture(lr, s.image, run / f"attention-{i}.png")
            if p is not None:
                made.append(p.name)
        results["pictures"] = made
    write_json(run / "results.json", results)
    log(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    """The results of one run as a few printable lines."""
    t, tr = results["test"], results["train"]
    lines = [f"{results['model']} captioner, held-out scenes n={t['n']}: relation accuracy "
             f"{100 * t['relation_accuracy']:.1f}%  item F1 {100 * t['item_f1']:.1f}%  exact {100 * t['exact']:.1f}%  "
             f"BLEU-4 {t['bleu4']:.1f}  CIDEr-D {t['cider_d']:.2f}"
             + (f"  ({tr['steps']} steps, {tr['seconds']:.0f} s)" if tr.get("seconds") else ""),
             "  " + t["bleu_signature"]]
    for name, b in results["baselines"].items():
        lines.append(f"  baseline {name} ({b['caption']!r}): relation accuracy {100 * b['relation_accuracy']:.1f}%  "
                     f"item F1 {100 * b['item_f1']:.1f}%  BLEU-4 {b['bleu4']:.1f}  CIDEr-D {b['cider_d']:.2f}")
    reach = results[f"time_to_valid_{METRIC}"]
    lines.append("  validation relation accuracy first reached: " + ", ".join(
        f"{t}: " + (f"step {r['step']} ({r['seconds']:.0f} s)" if r else "not reached") for t, r in reach.items()))
    return "\n".join(lines)
