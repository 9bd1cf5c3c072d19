"""Where the time of one LSH call goes: torch.profiler's device-time table of ``impl="lsh"``
(forward, then forward + backward) at one size, and the forward time and error of a few settings.

    python benchmarks/gpu/profile_lsh.py --T 65536 --D 64              # on a GPU
    TRITON_INTERPRET=1 python benchmarks/gpu/profile_lsh.py --device cpu --T 256 --D 16 --bucket-size 16

The inputs are bench_gpu's clustered ones (peaked attention); the error is against float32 exact
attention of the same inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnkit  # noqa: E402
from attnkit import masks  # noqa: E402
from bench_gpu import clustered_inputs, measure, rel_error  # noqa: E402


def _table(prof, device: torch.device, rows: int) -> str:
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


def _shared_exact(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, causal: bool) -> torch.Tensor:
    """Exact shared-QK attention (keys ``normalize(q)``, a token's score with itself -1e5, as
    ``lsh``) of the query ``rows`` only, in float32: ``(B, H, len(rows), D)``."""
    keys = F.normalize(q.float(), dim=-1)
    cols = torch.arange(q.shape[2], device=q.device)
    bias = torch.zeros(len(rows), q.shape[2], device=q.device)
    bias = bias.masked_fill(cols[None, :] == rows[:, None], -1e5)
    if causal:
        bias = bias.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
    return F.scaled_dot_product_attention(q.float()[:, :, rows], keys, v.float(), attn_mask=bias)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=65536)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--mask", choices=["none", "causal"], default="causal")
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--rows", type=int, default=22)
    p.add_argument("--triton-rows", choices=["copy", "indexed"], default="copy", help="lsh option triton_rows")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-variants", action="store_true", help="only the profile")
    p.add_argument("--json", type=Path, help="write the settings' times and errors here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    q, k, v, go = clustered_inputs(1, args.H, args.T, args.D, device, dtype)
    mask = masks.causal() if args.mask == "causal" else None
    opts = {"bucket_size": args.bucket_size, "n_hashes": args.n_hashes, "seed": 0, "triton_rows": args.triton_rows}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def fwd(**extra):
        with torch.no_grad():
            return attnkit.attention(q, k, v, mask, impl="lsh", options={**opts, **extra})

    def both():
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        out = attnkit.attention(qq, kk, vv, mask, impl="lsh", options=opts)
        return torch.autograd.grad(out, (qq, kk, vv), go)

    for name, fn in (("forward", fwd), ("forward + backward", both)):
        fn()  # compile, plans
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=acts) as prof:
            for _ in range(3):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"== {name}, T={args.T} D={args.D} H={args.H} {args.mask} {opts}: 3 calls", flush=True)
        print(_table(prof, device, args.rows), flush=True)
    if args.no_variants:
        return 0
    with torch.no_grad():
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=mask is not None)
        sdpa = measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=mask is not None), device,
                       target_s=0.3, max_cell_s=0.5)
    sample = torch.arange(0, args.T, max(1, args.T // 2048), device=device)  # rows for the shared-QK error
    print(f"== settings (forward): sdpa {sdpa['seconds'] * 1e3:.2f} ms", flush=True)
    rows = [{"setting": "sdpa", "ms": sdpa["seconds"] * 1e3}]
    for extra in ({}, {"triton_rows": "indexed"}, {"n_hashes": 1}, {"n_hashes": 2}, {"n_hashes": 8},
                  {"bucket_size": 32}, {"bucket_size": 128}, {"dedup": False}, {"shared_qk": True},
                  {"shared_qk": True, "n_hashes": 2}, {"kernel": "torch"}):
        try:
            if extra.get("shared_qk"):  # another model: keys are the normalised queries, a token not its own key
                err = rel_error(fwd(**extra)[:, :, sample], _shared_exact(q, v, sample, mask is not None))
            else:
                err = rel_error(fwd(**extra), exact)
            ms = measure(lambda: fwd(**extra), device, target_s=0.3, max_cell_s=0.5)["seconds"] * 1e3  # noqa: B023
        except Exception as exc:  # noqa: BLE001 - a setting that fails is reported, the rest still run
            print(f"  {extra}: failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            continue
        rows.append({"setting": {**opts, **extra}, "ms": ms, "rel_error": err})
        print(f"  {extra or 'as above'}: {ms:.2f} ms ({sdpa['seconds'] * 1e3 / ms:.2f}x sdpa's speed), "
              f"rel err {err:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"T": args.T, "D": args.D, "H": args.H, "mask": args.mask, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
