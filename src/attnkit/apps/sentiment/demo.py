"""``attnkit demo sentiment``: a quick attention-pooling model on frozen MiniLM (trained once and
cached under ``$ATTNKIT_CACHE/runs/``), a few held-out sentences classified, and a held-out review
highlighted by the hierarchical attention network (also quick and cached)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..trainer import cache_dir
from .data import fold_split, load, require_data, split_sentences
from .features import feature_path
from .highlight import highlight_html, highlight_png, top_tokens
from .loaded import Prediction, load_run
from .task import train

ENCODE_REVIEWS = "python -m attnkit.apps.sentiment.features reviews"
MAX_SENTENCES = 12

__all__ = ["demo_run", "run_demo"]


def demo_run(data: str = "sentences", model: str = "minilm-attn", log=print) -> Path:
    """The cached quick run of ``model`` on ``data`` (trained now if missing)."""
    path = cache_dir("runs") / f"sentiment-{data}-{model}-quick"
    if not (path / "results.json").exists():
        if path.exists():  # an unfinished earlier attempt (the folder is the cache's own)
            shutil.rmtree(path)
        log(f"training the quick {model} model on {data} (once; cached in {path}) ...")
        train(data=data, model=model, quick=True, out=path, progress=False, pictures=False, log=lambda *_: None)
    return path


def run_demo(out: str | Path, log=print) -> None:
    require_data("sentences")
    lr = load_run(demo_run(log=log))
    examples = load("sentences")
    test = [examples[i] for i in fold_split(examples, 10)[2][:4]]
    for ex, pred in zip(test, lr.predict([e.text for e in test])):
        gold = "positive" if ex.label else "negative"
        words = ", ".join(w for w, _ in top_tokens(pred, 4))
        log(f"{pred.label} {pred.probability:.2f} [{'ok' if pred.label == gold else 'expected ' + gold}]  "
            f"{ex.text[:90]}{'...' if len(ex.text) > 90 else ''}\n  attended: {words}")
    reviews = load("reviews")
    review = reviews[fold_split(reviews, 10)[2][0]]
    gold = "positive" if review.label else "negative"
    if feature_path("reviews").is_file():
        han = load_run(demo_run("reviews", "han", log=log))
        pred = han.predict([review.text])[0]
        how = "hierarchical attention network"
    else:  # the review states are not cached yet (about 15 minutes): each sentence with the sentence model
        log(f"(no cached review states: run '{ENCODE_REVIEWS}' for the hierarchical model; "
            "showing each sentence with the sentence model)")
        sents = split_sentences(review.text)[:MAX_SENTENCES]
        per = lr.predict(sents)
        pos = sum(p.probability if p.label == "positive" else 1 - p.probability for p in per) / len(per)
        pred = Prediction("positive" if pos >= 0.5 else "negative", max(pos, 1 - pos),
                          [u for p in per for u in p.units], [w for p in per for w in (p.token_weights or [])], None)
        how = f"sentence model, mean over {len(per)} sentences"
    log(f"held-out review ({len(review.text.split())} words, gold {gold}) by the {how}: "
        f"{pred.label} {pred.probability:.2f}; most attended words: " + ", ".join(w for w, _ in top_tokens(pred, 8)))
    out = Path(out)
    log(f"wrote {highlight_png(pred, out, 'held-out review')} and "
        f"{highlight_html([pred], out.with_suffix('.html'), ['held-out review'])}")
