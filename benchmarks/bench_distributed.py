"""Context-parallel ring attention on local gloo processes: memory, time and communication.

For each sequence length T and process count N, N local processes (a ``file://`` store, gloo)
run causal ring attention (zig-zag layout) forward and backward on B=1, H heads, D=64, fp32, one
torch thread each, and report per rank:

* ``peak_mib``: the process's peak resident memory growth over the call (the peak is reset with
  ``/proc/self/clear_refs`` after a warm-up call; ``VmHWM`` after minus ``VmRSS`` at the reset:
  the attention's own buffers, inputs and gradients included; ``MALLOC_MMAP_THRESHOLD_`` is set
  so that freed tensors leave the resident set);
* ``fwd_s`` / ``fwd_bwd_s``: wall-clock seconds (the slowest rank);
* ``bytes_per_step``: bytes each rank sends per ring step, counted from the tensors sent;
* ``exposed_comm_s``: time blocked waiting for messages after the overlapped compute;
  ``comm_alone_s``: the same exchanges timed with no compute; ``hidden`` = 1 - exposed / alone.

    python benchmarks/bench_distributed.py --sizes 16384 32768 --procs 1 2 4 --heads 4

Writes ``benchmarks/results/distributed.json``. On a machine with C cores, time stops scaling
past C processes (they share the cores); memory per rank still falls as 1/N.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from attnkit import masks
from attnkit.distributed import record_comm, ring_attention, run_local
from attnkit.distributed.layout import ShardLayout


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> float:
    """Reset the process's peak resident memory to its current value (Linux); returns that value."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _worker(rank: int, world: int, length: int, heads: int, out_dir: str, backward: bool) -> None:
    import torch.distributed as dist

    from attnkit.distributed import _group
    from attnkit.distributed.ring import _exchange, _Plan

    torch.manual_seed(rank)
    lay = ShardLayout.zigzag(length, world)
    n = lay.local_length(rank)
    warm = torch.randn(1, heads, 128 * world, 64, requires_grad=backward)  # thread pools, plan memo
    ring_attention(*(x[:, :, :128] for x in (warm, warm, warm)), masks.causal(),
                   layout=ShardLayout.zigzag(128 * world, world)).sum().backward() if backward else None
    dist.barrier()
    before = _reset_peak()
    q = torch.randn(1, heads, n, 64, requires_grad=backward)
    k = torch.randn(1, heads, n, 64, requires_grad=backward)
    v = torch.randn(1, heads, n, 64, requires_grad=backward)
    dist.barrier()
    t0 = time.perf_counter()
    with record_comm() as fwd_stats:
        out = ring_attention(q, k, v, masks.causal(), layout=lay)
    fwd_s = time.perf_counter() - t0
    fwd_bwd_s = None
    bwd_stats = None
    if backward:
        with record_comm() as bwd_stats:
            out.sum().backward()
        fwd_bwd_s = time.perf_counter() - t0
    peak = _status_mib("VmHWM") - before
    # the same ring exchanges with no compute: what the transfers cost when nothing hides them
    dist.barrier()
    g = _group.resolve(None)
    plan = _Plan(g, lay, None, {})
    kv = torch.cat([k.detach().reshape(-1), v.detach().reshape(-1)])
    t1 = time.perf_counter()
    for _ in range(world - 1):
        works, kv_next = _exchange(plan, kv, kv.numel(), tag=0)
        _group.wait_all(works, g, "timing")
    comm_alone = time.perf_counter() - t1
    row = {"rank": rank, "T_r": n, "peak_mib": round(peak, 1), "fwd_s": round(fwd_s, 3),
           "fwd_bwd_s": None if fwd_bwd_s is None else round(fwd_bwd_s, 3),
           "bytes_per_step": fwd_stats.per_step_bytes[:1], "steps": fwd_stats.steps,
           "bytes_sent_fwd": fwd_stats.bytes_sent,
           "bytes_sent_bwd": None if bwd_stats is None else bwd_stats.bytes_sent,
           "exposed_comm_fwd_s": round(fwd_stats.wait_s, 4), "compute_fwd_s": round(fwd_stats.compute_s, 3),
           "comm_alone_s": round(comm_alone, 4)}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(row, f)


def run_case(length: int, world: int, heads: int, backward: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_local(_worker, world, length, heads, tmp, backward, timeout_s=1800)
        rows = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    alone = max(r["comm_alone_s"] for r in rows)
    exposed = max(r["exposed_comm_fwd_s"] for r in rows)
    return {
        "T": length, "procs": world, "heads": heads,
        "peak_mib_per_rank": max(r["peak_mib"] for r in rows),
        "fwd_s": max(r["fwd_s"] for r in rows),
        "fwd_bwd_s": None if not backward else max(r["fwd_bwd_s"] for r in rows),
        "bytes_per_step": max((r["bytes_per_step"][0] if r["bytes_per_step"] else 0) for r in rows),
        "comm_alone_s": alone, "exposed_comm_fwd_s": exposed,
        "hidden_fraction_fwd": None if world == 1 or alone == 0 else round(max(0.0, 1 - exposed / alone), 3),
        "ranks": rows,
    }


def main() -> None:
    # big allocations straight from mmap and back to the system when freed, so that resident
    # memory follows the live tensors (glibc otherwise keeps freed blocks in its heap); the
    # worker processes inherit it
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "262144")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 32768])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed.json"))
    args = ap.parse_args()
    results = []
    print(f"{'T':>7} {'N':>2} {'peak MiB/rank':>14} {'fwd s':>7} {'fwd+bwd s':>10} {'MiB/step':>9} "
          f"{'exposed s':>10} {'alone s':>8} {'hidden':>7}")
    for length in args.sizes:
        for world in args.procs:
            r = run_case(length, world, args.heads, not args.forward_only)
            results.append(r)
            print(f"{r['T']:>7} {world:>2} {r['peak_mib_per_rank']:>14.0f} {r['fwd_s']:>7.2f} "
                  f"{r['fwd_bwd_s'] or 0:>10.2f} {r['bytes_per_step'] / 2**20:>9.2f} {r['exposed_comm_fwd_s']:>10.3f} "
                  f"{r['comm_alone_s']:>8.3f} {str(r['hidden_fraction_fwd']):>7}", flush=True)
            Path(args.out).write_text(json.dumps({"config": vars(args), "cpu_count": os.cpu_count(),
                                                  "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
