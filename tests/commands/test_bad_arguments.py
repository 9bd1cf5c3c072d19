"""Every command refuses a bad argument with one ``error:`` line on stderr and exit code 2, before
any heavy work and without a traceback."""

from __future__ import annotations

import argparse

import pytest

from attnkit.cli import build_parser, main
from attnkit.commands._args import UsageError

# the smallest valid command line of each (sub)command: bad options are appended to these
BASE = {
    "bench": ["bench"],
    "compare": ["compare"],
    "demo": ["demo"],
    "explain": ["explain", "a sentence"],
    "similarity": ["similarity", "a", "b"],
    "masks show": ["masks", "show", "causal"],
    "masks list": ["masks", "list"],
    "apps": ["apps"],
    "train": ["train", "translation"],
    "eval": ["eval", "translation", "runs/none"],
    "translate": ["translate", "runs/none", "one"],
    "serve": ["serve", "--no-browser"],
    "caption": ["caption", "runs/none", "scene.png"],
    "detect": ["detect", "runs/none", "scene.png"],
    "classify": ["classify", "runs/none", "a fine film"],
    "classify-image": ["classify-image", "runs/none", "shirt.png"],
    "summarize": ["summarize", "runs/none", "some text to shorten"],
    "transcribe": ["transcribe", "missing.wav"],
}


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Make every expensive entry point a command could reach fail the test if it is called."""
    import attnkit.apps.demo
    import attnkit.eval.approx
    import attnkit.eval.exact
    import attnkit.interpret
    import attnkit.masks.plot
    import attnkit.models

    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the arguments were checked")

    for module, name in [(attnkit.eval.exact, "run_exact"), (attnkit.eval.approx, "compare"),
                         (attnkit.eval.approx, "compare_inputs"), (attnkit.models, "load_minilm"),
                         (attnkit.interpret, "explain_sentence"), (attnkit.masks.plot, "save_mask"),
                         (attnkit.apps.demo, "run_demo")]:
        monkeypatch.setattr(module, name, forbidden)


def run_bad(argv, capsys) -> str:
    """Run ``argv``, check the failure is clean and return the error line."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (argv, captured)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


CASES = [
    # the applications
    (["train", "vision"], "TASK vision"),
    (["train", "translation", "--fold", "3"], "--fold applies to sentiment; got task 'translation'"),
    (["train", "sentiment", "--fold", "11"], "--fold"),
    (["train", "translation", "--tune-layers", "2"], "--tune-layers applies to sentiment; got task 'translation'"),
    (["train", "sentiment", "--tune-layers", "7"], "--tune-layers"),
    (["eval", "translation", "{missing}"], "is not a folder"),
    (["translate", "{dir}", "  "], "is empty"),
    (["apps", "--runs"], "--runs got no value"),
    (["serve", "--port", "0"], "error: --port 0; expected an integer from 1 to 65535"),
    (["caption", "{missing}", "scene.png"], "is not a folder"),
    (["detect", "{missing}", "scene.png"], "is not a folder"),
    (["classify", "{missing}", "a fine film"], "is not a folder"),
    (["classify-image", "{missing}", "shirt.png"], "is not a folder"),
    (["summarize", "{missing}", "some text"], "is not a folder"),
    (["transcribe", "{missing}.wav"], "missing.wav"),
    # masks show
    (["masks", "show", "nope"], "PATTERN nope; expected one of"),
    (["masks", "show", "bigbird", "--T", "0"], "--T 0; expected an integer from 1 to 1073741824"),
    (["masks", "show", "bigbird", "--T", "-4"], "--T -4"),
    (["masks", "show", "bigbird", "--T", "1e3"], "--T 1e3; expected an integer"),
    (["masks", "show", "bigbird", "--S", "0"], "--S 0"),
    (["masks", "show", "bigbird", "--block", "0"], "--block 0"),
    (["masks", "show", "sliding_window", "--param", "windw=512"], "has no parameter 'windw'; expected one of window"),
    (["masks", "show", "causal", "--param", "window=3"], "causal takes no parameters"),
    (["masks", "show", "sliding_window", "--param", "window"], "expected KEY=VALUE"),
    (["masks", "show", "sliding_window", "--param", "window=abc"], "--param window=abc"),
    (["masks", "show", "sliding_window", "--param", "window=-1"], "window must be an integer >= 0"),
    (["masks", "show", "sliding_window", "--param", "window=1.5"], "expected window to be an integer"),
    (["masks", "show", "sliding_window", "--param", "causal=3"], "expected causal to be true or false"),
    (["masks", "show", "sliding_window", "--param", "window=2", "--param", "window=3"], "given twice"),
    (["masks", "show", "fixed", "--param", "summary=9", "--param", "stride=4"], "summary must be <= stride"),
    (["masks", "show", "bigbird", "--param", "block=0"], "block_size must be an integer >= 1"),
    (["masks", "show", "bigbird", "--T", str(1 << 22)], "expected at most 268435456 (use --block 256 or more"),
    (["masks", "show", "sliding_window", "--param", "window=" + "9" * 20], "expected integers from"),
    (["masks", "show", "bigbird", "--out", "{missing}/x.png"], "does not exist"),
    (["masks", "show", "bigbird", "--out", "{dir}"], "is a folder"),
    (["masks", "show", "bigbird", "--out", "{dir}/x.nope"], "expected a picture name ending in"),
    (["masks", "show", "bigbird", "--out", "{file}/x.png"], "is a file"),
    (["masks", "frobnicate"], "ACTION frobnicate; expected one of list, show"),
    # compare
    (["compare", "--length", "0"], "--length/-T 0; expected an integer >= 1"),
    (["compare", "-T", "-3"], "-T -3"),
    (["compare", "--batch", "0"], "--batch 0"),
    (["compare", "--heads", "0"], "--heads 0"),
    (["compare", "--dim", "0"], "--dim 0"),
    (["compare", "--repeats", "0"], "--repeats 0"),
    (["compare", "--bucket-size", "0"], "--bucket-size 0"),
    (["compare", "--n-hashes", "0"], "--n-hashes 0"),
    (["compare", "--n-features", "0"], "--n-features 0"),
    (["compare", "--chunk-size", "0"], "--chunk-size 0"),
    (["compare", "--seed", "-1"], "--seed -1; expected an integer >= 0"),
    (["compare", "--dist", "uniform"], "--dist uniform; expected one of gaussian, clustered"),
    (["compare", "--impls", "nope"], "--impls nope; expected one of"),
    (["compare", "--impls", "sdpa", "sdpa"], "names sdpa twice"),
    (["compare", "--impls", "reference", "--length", "100000"], "drop reference"),
    (["compare", "--model", "gpt"], "--model gpt; expected one of minilm"),
    (["compare", "--length", "100000", "--heads", "64"], "elements per input tensor; expected at most"),
    (["compare", "--length", "9" * 30], "elements per input tensor"),
    (["compare", "--json", "{missing}/x.json"], "does not exist"),
    (["compare", "--json", "{dir}"], "is a folder"),
    (["compare", "--json", "{dir}/x.txt"], "ending in .json"),
    (["compare", "--length"], "--length/-T got no value"),
    # bench
    (["bench", "--lengths", "0"], "--lengths 0; expected an integer from 1 to 524288"),
    (["bench", "--lengths", "64", "-8"], "--lengths -8"),
    (["bench", "--lengths"], "--lengths got no value"),
    (["bench", "--impls", "nope"], "--impls nope; expected one of"),
    (["bench", "--repeats", "0"], "--repeats 0"),
    (["bench", "--json", "{missing}/b.json"], "does not exist"),
    (["bench", "--json", "{dir}"], "is a folder"),
    (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    # demo
    (["demo", "--sentence", "   "], "--sentence '   ' is empty"),
    (["demo", "--sentence", " ".join(["word"] * 40)], "--sentence has 40 words; expected 1 to 24"),
    (["demo", "--out", "{dir}"], "is a folder"),
    (["demo", "--out", "{missing}/d.png"], "does not exist"),
    (["demo", "--out", "{dir}/d.nope"], "ending in"),
    # explain
    (["explain", "   "], "sentence '   ' is empty"),
    (["explain", "x", "--max-tokens", "9999"], "--max-tokens 9999; expected an integer from 3 to 512"),
    (["explain", "x", "--max-tokens", "2"], "--max-tokens 2"),
    (["explain", "x", "--impl", "nope"], "--impl nope; expected one of auto"),
    (["explain", "x", "--out", "{file}"], "is a file"),
    (["explain", "x", "--out", "{missing}/report"], "does not exist"),
    (["explain"], "required: sentence"),
    # similarity
    (["similarity", "", "x"], "first sentence '' is empty"),
    (["similarity", "x", "  "], "second sentence '  ' is empty"),
    (["similarity", "x", "y", "--impl", "nope"], "--impl nope"),
    (["similarity", "x"], "required: b"),
    # the top level
    (["frobnicate"], "COMMAND frobnicate; expected one of"),
]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_argument_is_one_error_line(argv, expected, tmp_path, capsys, no_heavy_work):
    (tmp_path / "a_file").write_text("x")
    fill = {"missing": str(tmp_path / "missing"), "dir": str(tmp_path), "file": str(tmp_path / "a_file")}
    argv = [a.format(**fill) for a in argv]
    line = run_bad(argv, capsys)
    assert expected.format(**fill) in line


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """Every (name, parser) pair below ``parser``, nested ones as ``"masks show"``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                yield full, sub
                yield from _subparsers(sub, full)


def _int_options():
    """Every integer option of every command, with the values just outside its range."""
    out = []
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            kind = getattr(action.type, "__name__", "")
            if action.option_strings and kind.startswith("int_range("):
                low, high = kind[len("int_range("):-1].split(", ")
                out.append((name, action.option_strings[0], int(low) - 1))
                if high != "None":
                    out.append((name, action.option_strings[0], int(high) + 1))
    return out


INT_OPTIONS = _int_options()


def test_every_command_is_covered():
    assert {name for name, _ in _subparsers(build_parser())} == set(BASE) | {"masks"}
    assert {" ".join(a[:2]) if a[0] == "masks" else a[0] for a, _ in CASES} >= set(BASE) - {"masks list"}
    assert len(INT_OPTIONS) >= 15


@pytest.mark.parametrize("command,option,value", INT_OPTIONS, ids=[f"{c} {o}" for c, o, _ in INT_OPTIONS])
def test_every_integer_option_refuses_out_of_range(command, option, value, capsys, no_heavy_work):
    line = run_bad([*BASE[command], option, str(value)], capsys)
    assert line.startswith(f"error: {option}") and f" {value}; expected an integer" in line


def test_every_pattern_parameter_is_accepted_and_typos_refused(capsys):
    from attnkit.commands.masks import parse_params, pattern_params
    from attnkit.masks import patterns

    for name in patterns.PATTERNS:
        params = pattern_params(name)
        for key, default in params.items():
            text = {bool: "true", int: "3", tuple: "0,1"}.get(type(default), str(default))
            assert parse_params([f"{key}={text}"], name)  # accepted
        with pytest.raises(UsageError, match="no parameter 'zzz'"):
            parse_params(["zzz=1"], name)


def test_library_errors_become_one_line(capsys, monkeypatch):
    """An AttnKitError (or a file error) from deeper down: one error line, exit code 2."""
    import attnkit.apps.demo
    from attnkit.errors import UnsupportedError

    def fails(*args, **kwargs):
        raise UnsupportedError("no implementation can run this:\n  sdpa: reason one\n  reference: reason two")

    monkeypatch.setattr(attnkit.apps.demo, "run_demo", fails)
    line = run_bad(["demo"], capsys)
    assert line == "error: no implementation can run this: sdpa: reason one; reference: reason two"

    def missing(*args, **kwargs):
        open("/nonexistent/model.safetensors")

    monkeypatch.setattr(attnkit.apps.demo, "run_demo", missing)
    assert run_bad(["demo"], capsys) == "error: /nonexistent/model.safetensors: No such file or directory"

    def no_package(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'safetensors'", name="safetensors")

    monkeypatch.setattr(attnkit.apps.demo, "run_demo", no_package)
    assert "needs the package 'safetensors'; expected it installed" in run_bad(["demo"], capsys)


def test_masks_without_action_prints_help(capsys):
    assert main(["masks"]) == 0
    assert "ACTION" in capsys.readouterr().out
