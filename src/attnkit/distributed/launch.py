"""Run a function on N local processes joined in a process group (tests, examples, notebooks).

The group meets through a ``file://`` store in a temporary folder: nothing listens on a network
interface (``torchrun``'s default store listens on all of them). Use ``torchrun`` for real jobs.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import AttnKitError
from ._group import fail_fast

__all__ = ["run_local"]


def run_local(fn: Callable[..., Any], world: int, *args: Any, backend: str = "gloo", timeout_s: float = 60.0,
              threads: int = 1) -> None:
    """Start ``world`` processes, join them in a ``backend`` process group (``timeout_s`` bounds
    every wait) and call ``fn(rank, world, *args)`` in each. ``fn`` and ``args`` must be picklable
    (``fn`` a module-level function). A process that raises is published to the others (they stop
    naming it) and :func:`torch.multiprocessing.spawn` re-raises its error here.
    """
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise AttnKitError(f"world must be an int >= 1; got {world!r}")
    with tempfile.TemporaryDirectory(prefix="attnkit-dist-") as tmp:
        url = "file://" + os.path.join(tmp, "store")
        mp.spawn(_entry, args=(fn, world, url, backend, timeout_s, threads, args), nprocs=world, join=True)


def _entry(rank: int, fn: Callable[..., Any], world: int, url: str, backend: str, timeout_s: float, threads: int,
           args: tuple[Any, ...]) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=url, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        with fail_fast():
            fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
