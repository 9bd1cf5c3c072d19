"""Quick runs on the real data: the pointer-generator beats the lead baseline on held-out pairs;
the transformer without copying and the GRU without attention are reported against it (slow);
a checkpoint round-trips; eval rewrites the same results."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.apps.summarization import data, load_run
from attnkit.apps.summarization.models import PAD
from attnkit.apps.summarization.task import collate, encode, evaluate_run, train
from attnkit.apps.trainer import load_weights, read_json, save_weights


def _installed() -> bool:
    return all(v == "installed" for v in data.data_status().values())


def _train(tmp_path_factory, model: str):
    if not _installed():
        return None
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(f"summ-{model}") / "run"
    return train(model=model, quick=True, out=out, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def pointer_run(attnkit_cache):
    """The quick pointer run that ``attnkit demo summarization`` uses, trained once per session into
    the session's cache (by whichever test asks first) on one thread."""
    if not _installed():
        return None
    from attnkit.apps.summarization.demo import demo_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = demo_run(log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return load_run(path).run, read_json(path / "results.json")


def _check_report(results):
    for key in ("rouge1", "rouge2", "rougeL", "novel_1gram", "novel_2gram", "copy_rate"):
        assert math.isfinite(results["test"][key]) and math.isfinite(results["lead"].get(key, 0.0))
    assert results["test"]["n"] == 300 and results["lead"]["words"] >= 5
    assert set(results["pairs_per_source"]) == set(data.SOURCES)
    assert set(results["by_source"]) == set(data.SOURCES)
    assert results["train"]["steps"] >= 1 and results["time_to_valid_rougeL"]


def test_quick_pointer_beats_lead(pointer_run, need_data):
    need_data(pointer_run is not None, "summarization data (man pages, dpkg status, stdlib sources)")
    run, results = pointer_run
    _check_report(results)
    assert results["test"]["rougeL"] > results["lead"]["rougeL"], results
    copy = results["copy"]
    assert 0.0 < copy["mean_p_gen"] < 1.0 and copy["oov_word_share"] > 0.0  # it copies unknown words
    assert len(results["pictures"]) == 3 and all((run.path / p).stat().st_size > 5000 for p in results["pictures"])
    kinds = [line["event"] for line in run.metrics()]
    assert "eval" in kinds and kinds[-1] == "stop"


def test_checkpoint_round_trips(pointer_run, need_data, tmp_path):
    need_data(pointer_run is not None, "summarization data")
    run, results = pointer_run
    lr = load_run(run.path)
    texts = [ex["text"] for ex in results["examples"]]
    first = lr.summarize(texts)
    assert len(first) == len(texts) and all(first)
    # weights saved, loaded into a fresh model: identical log-probabilities
    save_weights(tmp_path / "copy.safetensors", lr.model.state_dict())
    again = load_run(run.path)
    again.model.load_state_dict(load_weights(tmp_path / "copy.safetensors"))
    batch = collate([encode(lr.vocab, t, "x", lr.config["src_len"], lr.config["tgt_len"]) for t in texts])
    with torch.no_grad():
        a = lr.model(batch["src"], batch["src"] != PAD, batch["tgt"][:, :-1], batch["src_ext"], batch["n_ext"])
        b = again.model(batch["src"], batch["src"] != PAD, batch["tgt"][:, :-1], batch["src_ext"], batch["n_ext"])
    assert torch.equal(a, b)
    assert again.summarize(texts) == first


def test_eval_rewrites_the_same_results(pointer_run, need_data):
    need_data(pointer_run is not None, "summarization data")
    run, results = pointer_run
    again = evaluate_run(run.path, log=lambda s: None, pictures=False)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert again["test"][key] == pytest.approx(results["test"][key])
    assert again["train"]["steps"] == results["train"]["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["transformer", "rnn"])
def test_quick_baselines_are_reported_against_lead(model, tmp_path_factory, need_data):
    made = _train(tmp_path_factory, model)
    need_data(made is not None, "summarization data")
    run, results = made
    _check_report(results)
    assert results["copy"] is None
    # reported against lead (in 300 quick steps neither reaches it; see docs/apps/summarization.md)
    assert 5.0 < results["test"]["rougeL"] and results["lead"]["rougeL"] > 20.0, results
    assert (len(results["pictures"]) == 3) == (model == "transformer")
