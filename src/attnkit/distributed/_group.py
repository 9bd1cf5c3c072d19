"""Process-group plumbing shared by the ring and all-to-all paths: who am I, a fail-fast error
channel, waits that notice a failed peer, the check that every rank agrees before any data moves,
and the counters the benchmarks read.

Failing fast. A rank that raises inside attnkit's distributed code (or inside a
:func:`fail_fast` block) writes ``"rank R: <error>"`` to the process group's store under one key.
When its process ends, its connections close and every rank waiting on it stops at once; the
waiting ranks read that key and raise :class:`RankFailedError` naming rank R. Waits are also
bounded by the group's timeout, so nothing hangs.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import AttnKitError, ShapeError

__all__ = ["RankFailedError", "CommStats", "record_comm", "fail_fast"]

_ERROR_KEY = "attnkit/distributed/failed"
_SIG_BYTES = 4096  # fixed size of a rank's call description in the agreement check


class RankFailedError(RuntimeError):
    """Another rank of the process group raised; the message names it and its error. The group
    cannot be used afterwards (messages may be in flight): destroy it."""


@dataclass
class CommStats:
    """Counters of the distributed attention calls made inside :func:`record_comm`.

    ``bytes_sent``: payload bytes this rank sent (point-to-point and all-to-all), counted from
    the tensors; ``messages``: sends; ``steps``: ring steps (or all-to-all exchanges);
    ``wait_s``: seconds spent blocked waiting for messages after the overlapped compute
    (communication that was *not* hidden); ``compute_s``: seconds in local attention.
    """

    bytes_sent: int = 0
    messages: int = 0
    steps: int = 0
    wait_s: float = 0.0
    compute_s: float = 0.0
    per_step_bytes: list[int] = field(default_factory=list)


_STATS: contextvars.ContextVar[CommStats | None] = contextvars.ContextVar("attnkit_comm_stats", default=None)


@contextmanager
def record_comm() -> Iterator[CommStats]:
    """Count bytes, messages, steps and blocked time of the distributed calls in the block.

    >>> from attnkit.distributed import record_comm
    >>> with record_comm() as stats:
    ...     pass
    >>> stats.bytes_sent
    0
    """
    stats = CommStats()
    token = _STATS.set(stats)
    try:
        yield stats
    finally:
        _STATS.reset(token)


def stats() -> CommStats | None:
    """The active counters, or None outside :func:`record_comm`."""
    return _STATS.get()


@dataclass(frozen=True)
class Group:
    """A process group as the attention code sees it: its size, this rank's index in it, and the
    global ranks of its members (point-to-point ops address global ranks)."""

    pg: Any  # a torch ProcessGroup, or None for the default (world) group
    size: int
    rank: int
    members: tuple[int, ...]

    def global_rank(self, group_rank: int) -> int:
        return self.members[group_rank % self.size]


def resolve(group: Any = None) -> Group:
    """``group`` (None = the default group) as a :class:`Group`; refuses if none is initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise AttnKitError("attnkit.distributed needs an initialised process group "
                           "(torch.distributed.init_process_group(...), or launch with torchrun); none is")
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise AttnKitError(f"this process (global rank {dist.get_rank()}) is not a member of group {group!r}")
    members = tuple(dist.get_global_rank(group, r) for r in range(size)) if group is not None else tuple(range(size))
    return Group(group, size, rank, members)


def _store() -> Any:
    """The default group's key-value store (the error channel), or None if it cannot be reached."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: fail-fast degrades to the group timeout
        return None


def _timeout_s(group: Group) -> float:
    """The process group's timeout in seconds (what it was created with), else the backend default."""
    try:
        pg = group.pg if group.pg is not None else dist.distributed_c10d._get_default_group()
        dev = torch.device("cuda") if dist.get_backend(pg) == "nccl" else torch.device("cpu")
        t = pg._get_backend(dev).options._timeout
    except Exception:  # noqa: BLE001 - private accessors moved: use the documented default
        t = dist.distributed_c10d.default_pg_timeout
    return t.total_seconds() if isinstance(t, datetime.timedelta) else float(t)


def peer_error() -> str | None:
    """The message a failed rank published, or None."""
    store = _store()
    if store is None:
        return None
    try:
        if store.check([_ERROR_KEY]):
            return store.get(_ERROR_KEY).decode()
    except Exception:  # noqa: BLE001 - the store itself is gone: a peer died
        return "a peer (the store is unreachable; a process may have exited)"
    return None


def publish_error(err: BaseException) -> None:
    """Tell the other ranks that this one failed (first failure wins)."""
    store = _store()
    if store is None or isinstance(err, RankFailedError):
        return
    try:
        rank = dist.get_rank()
        msg = f"rank {rank}: {type(err).__name__}: {err}"
        if not store.check([_ERROR_KEY]):
            store.set(_ERROR_KEY, msg[:2000])
    except Exception:  # noqa: BLE001 - best effort while failing
        pass


@contextmanager
def fail_fast() -> Iterator[None]:
    """Within the block, an exception on this rank is published to the other ranks, so that their
    distributed attention calls stop with :class:`RankFailedError` naming this rank instead of
    waiting for the group timeout. Wrap each training step (or the whole loop) in it.

    >>> from attnkit.distributed import fail_fast
    >>> with fail_fast():
    ...     pass
    """
    try:
        yield
    except BaseException as err:
        publish_error(err)
        raise


def raise_if_peer_failed(group: Group, cause: BaseException | None = None) -> None:
    """Raise :class:`RankFailedError` naming the failed rank if one published its error."""
    msg = peer_error()
    if msg is not None:
        raise RankFailedError(f"stopping rank {group.rank}: {msg}") from cause


def wait_all(works: Sequence[Any], group: Group, what: str) -> None:
    """Wait for ``works`` (async ops). The process group's timeout bounds the wait; when a peer has
    failed (its connection closes as its process ends) the error names it, from the error channel."""
    pending = [w for w in works if w is not None]
    if not pending:
        return
    t0 = time.perf_counter()
    try:
        for w in pending:
            w.wait()
    except RuntimeError as err:
        raise_if_peer_failed(group, err)
        raise RankFailedError(f"rank {group.rank}: {what} failed (a peer is stuck or gone, or the process "
                              f"group's timeout of {_timeout_s(group):.0f} s passed): {err}") from err
    s = stats()
    if s is not None:
        s.wait_s += time.perf_counter() - t0


def count_sent(nbytes: int, messages: int = 1) -> None:
    s = stats()
    if s is not None:
        s.bytes_sent += nbytes
        s.messages += messages


def tensor_digest(t: Tensor) -> str:
    """A short content hash of a tensor (masks that hold data must agree across ranks)."""
    data = t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def agree(group: Group, description: dict[str, Any], *, same: Sequence[str]) -> list[dict[str, Any]]:
    """Exchange each rank's ``description`` of its call (one small all-gather, before any data
    moves) and check the entries named in ``same`` are equal on every rank.

    Returns every rank's description (so callers can check per-rank fields such as the local
    length). Raises :class:`ShapeError` on every rank, naming the ranks that disagree, when they
    differ; the error channel is watched while waiting.
    """
    text = json.dumps(description, sort_keys=True, default=str).encode()
    if len(text) > _SIG_BYTES - 8:
        text = json.dumps({k: (v if len(json.dumps(v, default=str)) < 200 else
                               hashlib.sha1(json.dumps(v, default=str).encode()).hexdigest())
                           for k, v in description.items()}, sort_keys=True, default=str).encode()[:_SIG_BYTES - 8]
    buf = torch.zeros(_SIG_BYTES, dtype=torch.uint8)
    buf[:8] = torch.tensor(list(len(text).to_bytes(8, "little")), dtype=torch.uint8)
    buf[8:8 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    dev = _comm_device(group)
    buf = buf.to(dev)
    bufs = [torch.empty_like(buf) for _ in range(group.size)]
    raise_if_peer_failed(group)
    work = dist.all_gather(bufs, buf, group=group.pg, async_op=True)
    wait_all([work], group, "the agreement check")
    descs = []
    for b in bufs:
        raw = bytes(b.cpu().tolist())
        n = int.from_bytes(raw[:8], "little")
        descs.append(json.loads(raw[8:8 + n].decode()))
    for key in same:
        values = [d.get(key) for d in descs]
        if any(v != values[0] for v in values):
            by_value: dict[str, list[int]] = {}
            for r, v in enumerate(values):
                by_value.setdefault(json.dumps(v, default=str), []).append(r)
            detail = "; ".join(f"ranks {rs}: {v}" for v, rs in by_value.items())
            raise ShapeError(f"the ranks disagree on {key} ({detail}); every rank must make the same call "
                             f"(found before any attention data was sent)")
    return descs


def _comm_device(group: Group) -> torch.device:
    """Where collective buffers live: CUDA for NCCL, else CPU."""
    backend = dist.get_backend(group.pg)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
