"""Shared pieces of the vision tests (imported by path; not a conftest)."""

from __future__ import annotations

import torch

from attnkit.apps.vision import classify


def quick_classifier(model: str, out):
    """``(run folder, results)`` of ``attnkit train vit --quick --model MODEL`` on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return classify.train(model=model, quick=True, out=out, progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
