# %% [markdown]
# # Training a language model on long sequences, context-parallel
#
# Each rank holds a zig-zag shard of every sequence; inside `context_parallel(lm)` the model's
# attention runs as ring attention over the ranks, and its rotary embeddings use global
# positions. The loss of each step is checked against the same model trained in one process.
#
# ```console
# torchrun --standalone --nproc_per_node=2 examples/long_context_distributed.py --seq 2048 --steps 30
# python examples/long_context_distributed.py          # no torchrun: 2 local processes, short run
# ```
#
# The text is real: the source (docstrings and code) of Python's standard library, read as bytes.

# %%
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from attnkit.distributed import context_parallel, fail_fast, shard
from attnkit.nn import TransformerLM


def stdlib_bytes(limit: int) -> torch.Tensor:
    """The first ``limit`` bytes of the standard library's sources (sorted file order), as ids 0..255."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def batches(seq: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """``steps`` batches of ``(batch, seq + 1)`` windows drawn from the text (the same on every rank)."""
    text = stdlib_bytes(4_000_000)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(text) - seq - 1, (steps, batch), generator=g)
    return [torch.stack([text[s:s + seq + 1] for s in row.tolist()]) for row in starts]


def new_model(seed: int) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(256, d_model=64, nhead=4, num_layers=2, num_kv_heads=2)


def train(args: argparse.Namespace, distributed: bool) -> list[float]:
    """Per-step training losses; with ``distributed`` every rank trains on its shard of each sequence."""
    lm = new_model(args.seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    world = dist.get_world_size() if distributed else 1
    losses = []
    for ids in batches(args.seq, args.batch, args.steps, args.seed):
        x, y = ids[:, :-1], ids[:, 1:]  # (B, T) inputs and next-byte targets
        if distributed:
            x, y = shard(x, "zigzag", dim=1), shard(y, "zigzag", dim=1)  # (B, T_r)
            with context_parallel(lm, length=args.seq):
                logits = lm(x)  # (B, T_r, 256)
        else:
            logits = lm(x)  # (B, T, 256)
        loss_sum = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1), reduction="sum")
        (loss_sum / (args.batch * args.seq)).backward()  # the mean over ALL tokens of the batch
        total = loss_sum.detach().clone()
        if distributed and world > 1:
            for p in lm.parameters():  # each rank's gradient covers its own tokens: add them up
                dist.all_reduce(p.grad)
            dist.all_reduce(total)
        opt.step()
        opt.zero_grad()
        losses.append(total.item() / (args.batch * args.seq))
    return losses


def worker(args: argparse.Namespace) -> list[float]:
    """One rank (under torchrun, or started by :func:`launch_local`); returns the step losses."""
    with fail_fast():
        losses = train(args, distributed=True)
    if dist.get_rank() == 0 and args.result:
        Path(args.result).write_text(json.dumps(losses))
    return losses


def launch_local(args: argparse.Namespace, procs: int) -> list[float]:
    """Run ``procs`` ranks of this script as local processes joined through a file store."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "losses.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--seq", str(args.seq), "--steps", str(args.steps),
               "--batch", str(args.batch), "--seed", str(args.seed), "--result", result]
        env = {**os.environ, "ATTNKIT_INIT": f"file://{tmp}/store", "WORLD_SIZE": str(procs)}
        kids = [subprocess.Popen(cmd, env={**env, "ATTNKIT_RANK": str(r)}, stdout=subprocess.DEVNULL)
                for r in range(procs)]
        codes = [k.wait(timeout=900) for k in kids]
        if any(codes):
            raise RuntimeError(f"a rank failed (exit codes {codes})")
        return json.loads(Path(result).read_text())


def compare(dist_losses: list[float], single: list[float]) -> float:
    worst = max(abs(a - b) for a, b in zip(dist_losses, single))
    print(f"{'step':>4} {'context-parallel':>17} {'one process':>12}")
    for i in range(0, len(single), max(1, len(single) // 8)):
        print(f"{i:>4} {dist_losses[i]:>17.4f} {single[i]:>12.4f}")
    print(f"largest loss difference over {len(single)} steps: {worst:.2e}")
    return worst


# %%
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="context-parallel training of a small byte-level LM")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--procs", type=int, default=2, help="local processes when not under torchrun")
    ap.add_argument("--result", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if "ATTNKIT_RANK" in os.environ:  # a rank started by launch_local
        dist.init_process_group("gloo", init_method=os.environ["ATTNKIT_INIT"], rank=int(os.environ["ATTNKIT_RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))
        worker(args)
        dist.destroy_process_group()
        return
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:  # under torchrun
        dist.init_process_group("gloo")
        losses = worker(args)
        if dist.get_rank() == 0:  # the reference: the same training in this one process
            worst = compare(losses, train(args, distributed=False))
            assert worst < 1e-3, "context-parallel training diverged from the single-process run"
        dist.destroy_process_group()
        return
    dist_losses = launch_local(args, args.procs)
    single = train(args, distributed=False)
    worst = compare(dist_losses, single)
    assert worst < 1e-3, "context-parallel training diverged from the single-process run"
    assert single[-1] < single[0], "the loss did not fall"


if __name__ == "__main__":
    main(["--seq", "256", "--steps", "4"] if "pytest" in sys.modules else None)
