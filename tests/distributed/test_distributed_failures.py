"""Failures fail fast: disagreeing ranks are refused before any attention data moves, and a rank
that raises makes the others stop with an error naming it (no hang)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from attnkit import AttnKitError, masks
from attnkit.distributed import RankFailedError, ring_attention, run_local, shard, ulysses_attention


def _expect(fn, *exc: type[BaseException]) -> str:
    try:
        fn()
    except exc as err:
        return f"{type(err).__name__}: {err}"
    raise AssertionError(f"expected {exc}")


def _mismatches(rank: int, world: int, out_dir: str) -> None:
    q = torch.randn(1, 4, 20, 8, dtype=torch.float64)
    qs = shard(q)
    msgs = []
    # a different head count on rank 1
    hq = qs if rank == 0 else qs[:, :2]
    msgs.append(_expect(lambda: ring_attention(hq, hq, hq), AttnKitError))
    # a different mask on rank 1 (padding lengths disagree)
    m = masks.padding(torch.tensor([20 if rank == 0 else 15]))
    msgs.append(_expect(lambda: ring_attention(qs, qs, qs, m), AttnKitError))
    # shards that do not follow the layout (rank 0 holds two positions too many)
    bad = qs if rank == 1 else torch.cat([qs, qs[:, :, :2]], 2)
    msgs.append(_expect(lambda: ring_attention(bad, bad, bad, masks.causal()), AttnKitError))
    # heads not divisible by the ranks for the all-to-all (checked after the agreement)
    h3 = torch.randn(1, 3, qs.shape[2], 8, dtype=torch.float64)
    msgs.append(_expect(lambda: ulysses_attention(h3, h3, h3), AttnKitError))
    # and the group still works afterwards: nothing was sent before the refusals
    out = ring_attention(qs, qs, qs, masks.causal())
    assert out.shape == qs.shape
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(msgs))


def test_disagreeing_ranks_are_refused_before_communication(tmp_path):
    run_local(_mismatches, 2, str(tmp_path), timeout_s=60)
    for rank in (0, 1):
        heads, mask, layout, ulysses = (tmp_path / f"rank{rank}.txt").read_text().split("\n")
        assert "disagree on H" in heads and "ranks [0]: 4" in heads and "ranks [1]: 2" in heads
        assert "disagree on mask" in mask
        assert "rank 0 holds 12 (expected 11)" in layout
        assert "3 query heads over 2 ranks" in ulysses


def _boom(b, h, i, j):
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise RuntimeError("injected failure in rank 1's mask")
    return j <= i


def _one_rank_raises(rank: int, world: int, out_dir: str) -> None:
    q = shard(torch.randn(1, 2, 64, 8, dtype=torch.float64))
    m = masks.from_mod(_boom)
    t0 = time.perf_counter()
    try:
        ring_attention(q, q, q, m)
    except RankFailedError as err:  # rank 0: stopped by rank 1's failure
        with open(os.path.join(out_dir, "rank0.txt"), "w") as f:
            f.write(f"{time.perf_counter() - t0:.2f}\n{err}")
        return
    except Exception:  # rank 1: it raised (and published it); its process ends here
        os._exit(0)
    raise AssertionError("the ring completed although rank 1 raised")


def test_a_rank_that_raises_stops_the_others_naming_it(tmp_path):
    t0 = time.perf_counter()
    run_local(_one_rank_raises, 2, str(tmp_path), timeout_s=60)
    elapsed, msg = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert "rank 1" in msg and "injected failure" in msg, msg
    assert float(elapsed) < 30, "rank 0 waited for the timeout instead of stopping at once"
    assert time.perf_counter() - t0 < 55


def test_needs_a_process_group():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(AttnKitError, match="initialised process group"):
        ring_attention(q, q, q)
