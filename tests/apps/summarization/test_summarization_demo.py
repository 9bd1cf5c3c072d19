"""``attnkit demo summarization`` summarizes held-out texts with the quick pointer run (trained once
per session, shared with the quick tests) and draws its picture; ``eval --beam`` and
``summarize --beam`` use beam search on that run."""

from __future__ import annotations

import json

import pytest

from attnkit.apps.summarization import data
from attnkit.apps.summarization.demo import BEAM, demo_examples
from attnkit.cli import main
from conftest import png_ok, require_data, run_cli_one_thread


@pytest.fixture(scope="module")
def demo(attnkit_cache, tmp_path_factory):
    status = data.data_status()
    require_data(all(v == "installed" for v in status.values()), f"summarization data ({status})")
    out = tmp_path_factory.mktemp("demo") / "summary.png"
    rc, printed = run_cli_one_thread(["demo", "summarization", "--out", str(out)])
    assert rc == 0
    return attnkit_cache / "runs" / "summarization-all-pointer-quick", printed, out


def test_demo_summarizes_held_out_texts_and_draws(demo):
    run, printed, out = demo
    examples = demo_examples()
    assert [p.source for p in examples] == list(data.SOURCES)
    assert printed.count("  reference: ") == 3 and printed.count("  greedy: ") == 3
    assert printed.count(f"  beam {BEAM}: ") == 3
    for p in examples:
        assert f"[{p.source}] " in printed and f"  reference: {p.summary}\n" in printed
    assert f"{out}" in printed and png_ok(out, 5000)
    assert (run / "model.safetensors").is_file() and (run / "results.json").is_file()


def test_eval_and_summarize_with_beam(demo, capsys, tmp_path):
    run = demo[0]
    greedy_before = (run / "results.json").read_text()
    assert main(["eval", "summarization", str(run), "--beam", "2", "--length-penalty", "0.5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "(beam 2, length penalty 0.5)" in printed
    results = json.loads((run / "results-beam2-lp0.5.json").read_text())
    assert results["decoding"]["beam"] == 2 and results["decoding"]["length_penalty"] == 0.5
    assert results["test"]["n"] == 300 and results["test"]["rougeL"] > results["lead"]["rougeL"]
    assert results["copy"]["oov_word_share"] > 0.0  # beam search keeps copying words outside the vocabulary
    assert "pictures" not in results
    assert (run / "results.json").read_text() == greedy_before  # the greedy results stay

    from attnkit.apps.summarization import load_run

    lr = load_run(run)
    text = demo_examples()[1].text
    beam1 = lr.summarize([text], beam=1)[0]
    assert beam1 == lr.summarize([text])[0]
    pic = tmp_path / "beam.png"
    assert main(["summarize", str(run), text, "--beam", "3", "--out", str(pic)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == lr.summarize([text], beam=3)[0] and lines[0]
    assert lines[1] == f"wrote {pic}" and png_ok(pic, 5000)
    assert main(["summarize", str(run), text, "--beam", "1"]) == 0
    assert capsys.readouterr().out.strip() == beam1
