"""The peer-suite problems are tiny (tens of positions): one intra-op thread runs them faster than
several, whose wake-ups cost more than the work, above all on a loaded machine."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
