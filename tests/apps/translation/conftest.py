"""Fixtures of the translation tests: a private data cache, one torch thread, quick runs trained once."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("num2words", reason="the apps extra (num2words) is not installed")
pytest.importorskip("sacrebleu", reason="the apps extra (sacrebleu) is not installed")
pytest.importorskip("tokenizers", reason="the models extra (tokenizers) is not installed")
pytest.importorskip("safetensors", reason="the models extra (safetensors) is not installed")


@pytest.fixture(scope="session")
def attnkit_cache(tmp_path_factory):
    """``ATTNKIT_CACHE`` pointed at a fresh folder for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("attnkit-cache")
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


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: the models are tiny, and a second thread only waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
