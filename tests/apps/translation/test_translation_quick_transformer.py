"""``attnkit demo translation`` trains the quick transformer; the run beats the trivial baselines,
reloads to identical outputs, and the eval and translate commands use it."""

from __future__ import annotations

import json

import pytest
import torch
from translation_helpers import assert_beats_baselines

from attnkit.cli import main
from conftest import run_cli_one_thread


@pytest.fixture(scope="module")
def demo_run(attnkit_cache, tmp_path_factory):
    """The demo's cached quick transformer run (trained by the demo itself, on one thread)."""
    out = tmp_path_factory.mktemp("demo") / "align.png"
    rc, printed = run_cli_one_thread(["demo", "translation", "--out", str(out)])
    assert rc == 0
    return attnkit_cache / "runs" / "translation-numbers-fr-quick", printed, out


def test_demo_translates_and_draws(demo_run):
    run, printed, out = demo_run
    assert printed.count("  -> ") == 4 and "attended: " in printed
    assert out.stat().st_size > 1000 and out.with_name("align-heads.png").exists()
    assert (run / "model.safetensors").exists() and (run / "tokenizer.json").exists()


def test_quick_transformer_beats_baselines(demo_run):
    results = json.loads((demo_run[0] / "results.json").read_text())
    assert_beats_baselines(results, min_exact=0.5)
    assert results["test"]["chrf_signature"].startswith("nrefs:1|case:mixed")
    assert results["alignment_error"]["pairs"] > 250
    assert set(results["by_length"]) >= {"5-6", "7-8", "9-10", "11+"}
    assert results["train"]["target_tokens_per_second"] > 0


def test_reloaded_run_gives_identical_translations(demo_run):
    from attnkit.apps.translation import load_run, translate

    a, b = load_run(demo_run[0]), load_run(demo_run[0])
    texts = ["three hundred and twenty", "forty-five thousand, seven hundred and eighty-seven"]
    assert translate(a.model, a.tokenizer, texts) == translate(b.model, b.tokenizer, texts)
    src, mask = a.tokenizer.batch(texts)
    tgt_in = torch.full((2, 3), 5)
    assert torch.equal(a.model(src, mask, tgt_in), b.model(src, mask, tgt_in))
    # beam search and the uncached path agree with greedy on a trained model
    greedy = translate(a.model, a.tokenizer, texts)
    assert translate(a.model, a.tokenizer, texts, use_cache=False) == greedy
    assert translate(a.model, a.tokenizer, texts, beam=1) == greedy


def test_translate_and_eval_commands(demo_run, capsys, tmp_path):
    run = str(demo_run[0])
    from attnkit.apps.translation import load_run, translate

    assert main(["translate", run, "three hundred and twenty", "--out", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    lr = load_run(run)
    assert out[0] == translate(lr.model, lr.tokenizer, ["three hundred and twenty"])[0] != ""
    assert (tmp_path / "a.png").exists() and (tmp_path / "a-heads.png").exists()
    assert main(["eval", "translation", run, "--beam", "3"]) == 0
    printed = capsys.readouterr().out
    assert "exact" in printed and "by source length" in printed
    results = json.loads((demo_run[0] / "results.json").read_text())
    assert results["decoding"]["beam"] == 3
    assert main(["apps", "--runs", str(demo_run[0].parent)]) == 0
    listing = capsys.readouterr().out
    assert "translation:" in listing and "translation-numbers-fr-quick" in listing
    assert "data numbers: installed" in listing
