"""Attention modules: attnkit.nn.MultiHeadAttention against torch.nn.MultiheadAttention, and
greedy decoding with the KV cache against recomputing the prefix.

    python benchmarks/bench_mha.py                      # forward, T = 128..4096
    python benchmarks/bench_mha.py --backward           # forward + backward
    python benchmarks/bench_mha.py --decode             # greedy decoding, 512 new tokens
    python benchmarks/bench_mha.py --quick              # T = 128, 256 (or 64 new tokens with --decode)

Module cases (B=1, E=512, H=8, fp32, self-attention, no mask), each with need_weights True
and False. Implementations measured in the same run:

* ``sdpa``: the bare floor: the same four projections around
  ``torch.nn.functional.scaled_dot_product_attention`` (it never returns weights, so in the
  need_weights=True rows it shows the cost of the output alone);
* ``torch_mha``: ``torch.nn.MultiheadAttention`` with the same weights;
* ``attnkit``: ``attnkit.nn.MultiHeadAttention`` with ``impl="auto"`` (the chosen
  implementation is recorded in the JSON);
* ``attnkit_ref``: the same module with ``impl="reference"`` (T <= 2048).

Ratios are printed against ``sdpa`` and against ``torch_mha``. Decoding uses
``attnkit.nn.TransformerLM`` (d_model 256, 4 heads, 4 layers, RoPE) from a 16-token prompt and
reports tokens/s; ``kv_cache`` uses the cache with ``impl="auto"`` (sdpa),
``kv_cache_reference`` the cache with ``impl="reference"``, ``recompute`` reruns the whole
prefix every step.

Results go to ``benchmarks/results/mha_fwd.json``, ``mha_fwd+bwd.json``, ``mha_decode.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import attnkit
from attnkit.eval.bench import Results, time_fn
from attnkit.nn import MultiHeadAttention, TransformerLM

RESULTS = Path(__file__).parent / "results"
E, H = 512, 8


def _bare_sdpa(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Projections + fused SDPA + output projection, weights shared with ``mha``."""
    b, t, _ = x.shape
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # (B, T, 3E)
    q, k, v = (z.view(b, t, H, E // H).transpose(1, 2) for z in qkv.chunk(3, dim=-1))  # (B, H, T, D)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D)
    return mha.out_proj(out.transpose(1, 2).reshape(b, t, E))


def module_cases(lengths: list[int], backward: bool, repeats: int, max_ref: int = 2048) -> Results:
    res = Results("mha", meta={"embed_dim": E, "heads": H, "batch": 1, "dtype": "float32", "backward": backward})
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True)
    mods = {"attnkit": MultiHeadAttention.from_torch(ref),
            "attnkit_ref": MultiHeadAttention.from_torch(ref, impl="reference")}
    for lq in lengths:
        x = torch.randn(1, lq, E, requires_grad=backward)
        for need in (False, True):
            runs = {
                "sdpa": lambda x=x: _bare_sdpa(ref, x),
                "torch_mha": lambda x=x, need=need: ref(x, x, x, need_weights=need)[0],
                "attnkit": lambda x=x, need=need: mods["attnkit"](x, need_weights=need)[0],
                "attnkit_ref": lambda x=x, need=need: mods["attnkit_ref"](x, need_weights=need)[0],
            }
            q4 = torch.empty(1, H, lq, E // H)
            chosen = attnkit.explain_dispatch(q4, q4, q4, return_weights=need).chosen
            for name, fn in runs.items():
                case = {"T": lq, "need_weights": need}
                if name == "attnkit_ref" and lq > max_ref:
                    res.add(case, name, None, note=f"skipped above T={max_ref}")
                    continue

                def step(fn=fn):
                    out = fn()
                    if backward:
                        out.sum().backward()

                t = time_fn(step, repeats=repeats, max_seconds=30.0)
                res.add(case, name, t.median, **({"impl_chosen": chosen} if name == "attnkit" else {}))
                print(f"  T={lq:<5} need_weights={need!s:<5} {name:<12} {t.median * 1e3:9.2f} ms", flush=True)
    return res


def decode_cases(new_tokens: int, prompt_len: int = 16, repeats: int = 1) -> Results:
    torch.manual_seed(0)
    lm = TransformerLM(vocab=1000, d_model=256, nhead=4, num_layers=4, dim_feedforward=1024).eval()
    prompt = torch.randint(0, 1000, (1, prompt_len))
    res = Results("mha_decode", meta={"d_model": 256, "heads": 4, "layers": 4, "vocab": 1000,
                                      "prompt": prompt_len, "new_tokens": new_tokens})
    lm_ref = TransformerLM(vocab=1000, d_model=256, nhead=4, num_layers=4, dim_feedforward=1024,
                           impl="reference").eval()
    lm_ref.load_state_dict(lm.state_dict())
    outs = {}
    for name, model, use_cache in (("kv_cache", lm, True), ("kv_cache_reference", lm_ref, True),
                                   ("recompute", lm, False)):
        def run(use_cache=use_cache, name=name, model=model):
            outs[name] = model.generate(prompt, new_tokens, use_cache=use_cache)

        t = time_fn(run, warmup=0, repeats=repeats, max_seconds=1.0)
        res.add({"new_tokens": new_tokens}, name, t.median, tokens_per_s=new_tokens / t.median)
        print(f"  {name:<10} {t.median:8.2f} s  {new_tokens / t.median:8.1f} tokens/s", flush=True)
    same = all(torch.equal(outs["kv_cache"], o) for o in outs.values())
    res.meta["same_tokens"] = same
    print(f"  identical greedy tokens in every run: {same}")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--backward", action="store_true", help="time forward + backward")
    p.add_argument("--decode", action="store_true", help="greedy decoding: KV cache vs recomputation")
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="T = 128, 256 (64 new tokens with --decode)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/mha_<mode>.json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode:
        n = 64 if args.quick else args.new_tokens
        res = decode_cases(n)
        print(f"\ngreedy decoding, {n} new tokens, threads={torch.get_num_threads()}")
        print(res.table(["new_tokens"], baseline="recompute"))
        rows = {r["impl"]: r for r in res.rows}
        print(f"\nkv_cache {rows['kv_cache']['tokens_per_s']:.1f} tokens/s, recompute "
              f"{rows['recompute']['tokens_per_s']:.1f} tokens/s: "
              f"{rows['kv_cache']['tokens_per_s'] / rows['recompute']['tokens_per_s']:.1f}x")
        out = Path(args.out) if args.out else RESULTS / "mha_decode.json"
    else:
        lengths = [128, 256] if args.quick else args.lengths
        mode = "fwd+bwd" if args.backward else "fwd"
        res = module_cases(lengths, args.backward, args.repeats)
        print(f"\nMHA module, B=1 E={E} H={H} fp32, {mode}, threads={torch.get_num_threads()}")
        print(res.table(["T", "need_weights"], baseline="sdpa"))
        print()
        print(res.table(["T", "need_weights"], baseline="torch_mha"))
        out = Path(args.out) if args.out else RESULTS / f"mha_{mode}.json"
    print(f"wrote {res.save(out)}")


if __name__ == "__main__":
    main()
