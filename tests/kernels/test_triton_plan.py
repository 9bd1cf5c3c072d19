"""The Triton kernels' plans, built without Triton: the forward tile height chosen for the mask."""

from __future__ import annotations

import torch

import attnkit
from attnkit import masks
from attnkit.call import make_call
from attnkit.impls.triton_block_sparse import _forward_plan
from attnkit.kernels.triton_plan import triton_plan
from attnkit.masks import patterns


def _call(mask, t: int = 2048):
    q = torch.zeros(1, 2, t, 16)
    return make_call(q, q, q, mask)


def test_busy_query_blocks_halve_the_forward_tile():
    big = patterns.bigbird(128, window_blocks=3, global_blocks=1, random_blocks=1)
    assert triton_plan(big, 8192, 8192, 128, 64, torch.device("cpu")).imbalance > 4
    assert _forward_plan(_call(big, 8192), None, 64).bm == 64  # its global rows attend every key
    assert _forward_plan(_call(big, 2048), None, 64).bm == 128  # 32 tiles against a mean of 11: kept
    for even in (masks.causal(), masks.window(256), None):  # at most 2x the mean: the 128-row tile
        plan = _forward_plan(_call(even), None, 64)
        assert plan.bm == 128 and plan.imbalance <= 2.0
    assert _forward_plan(_call(big, 8192), 128, 64).bm == 128  # an explicit tile is kept


def test_imbalance_of_a_plan_counts_full_and_partial_tiles():
    plan = triton_plan(masks.causal(), 512, 512, 128, 64, torch.device("cpu"))
    per_block = [2 * (i + 1) for i in range(4)]  # query block i sees 2 (i + 1) key tiles of 64
    assert abs(plan.imbalance - max(per_block) / (sum(per_block) / 4)) < 1e-6
    assert attnkit.list_impls()  # the registry imports with the plan module and without Triton
