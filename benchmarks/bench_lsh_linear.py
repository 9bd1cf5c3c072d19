"""LSH and linear attention: what they save (time, memory) and what they cost (error, recall).

    python benchmarks/bench_lsh_linear.py scaling --lengths 1024 2048 4096 8192 16384
    python benchmarks/bench_lsh_linear.py scaling --lengths 32768 --no-causal
    python benchmarks/bench_lsh_linear.py peers --lengths 1024 4096 8192
    python benchmarks/bench_lsh_linear.py error
    python benchmarks/bench_lsh_linear.py --quick          # every section at small sizes

``memory``: only the peak extra memory of one forward (fresh process, peak mark reset after
the inputs are built). ``scaling``: forward time (median) and peak extra memory of sdpa (exact), lsh,
lsh_torch (the same LSH with ``kernel="torch"``: its rounds in PyTorch rather than on the native
kernel), linear (elu+1), linear (FAVOR+) and block_sparse when registered, B=1 H=4 D=64 fp32, with
and without a causal mask; ratios to sdpa from the same run. ``--backward`` times forward +
backward instead (files end in ``_fwdbwd``).

``peers``: equal settings against ``reformer-pytorch`` ``LSHAttention`` (shared-QK, bucket 64,
4 hashes; its default counts a key found by several rounds several times, as ``lsh_nodedup``
does, while ``lsh`` counts it once) and ``performer-pytorch`` ``FastAttention`` (256 orthogonal
features), causal and not.
Peers are benchmark-only: install them with ``pip install --no-deps reformer-pytorch
product-key-memory==0.1.10 performer-pytorch einops axial-positional-embedding
local-attention==1.9.0``; a missing peer is skipped with the reason printed. Error is measured
against the exact problem each approximates (for shared-QK LSH: keys = normalised queries,
no attention to self).

``error``: relative output error and attention-mass recall on Gaussian inputs (the hard case:
no structure, weights spread over many keys), clustered inputs, and queries/keys captured
with ``attnkit.observe`` from all-MiniLM-L6-v2 (row missing if the model is not installed).

Writes ``benchmarks/results/lsh_linear_<section>[_<tag>].json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import attnkit
from attnkit import masks
from attnkit.eval.approx import compare_inputs, mass_recall
from attnkit.eval.bench import Results, environment, peak_memory, time_fn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HEADS, DIM = 4, 64

IMPLS: dict[str, tuple[str, dict[str, Any]]] = {
    "sdpa": ("sdpa", {}),
    "lsh": ("lsh", {"shared_qk": True, "bucket_size": 64, "n_hashes": 4}),
    "lsh_nodedup": ("lsh", {"shared_qk": True, "bucket_size": 64, "n_hashes": 4, "dedup": False}),
    "lsh_torch": ("lsh", {"shared_qk": True, "bucket_size": 64, "n_hashes": 4, "kernel": "torch"}),  # no kernel
    "linear": ("linear", {"feature_map": "elu"}),
    "favor": ("linear", {"feature_map": "favor", "n_features": 256}),
    "block_sparse": ("block_sparse", {}),
}


# ----------------------------------------------------------------------------------------------
# runners (also the setup functions of the memory probes)
# ----------------------------------------------------------------------------------------------


def make_runner(name: str, t: int, causal: bool, seed: int = 0, backward: bool = False):
    """A zero-argument forward (and backward, when ``backward``) of method ``name`` on fresh
    ``(1, HEADS, t, DIM)`` inputs."""
    q, k, v = compare_inputs(t=t, heads=HEADS, head_dim=DIM, seed=seed)
    if backward:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    if name.startswith("reformer") or name.startswith("performer"):
        return _peer_runner(name, q, k, v, causal)
    impl, opts = IMPLS[name]
    mask = masks.causal() if causal else None
    if impl == "block_sparse":
        mask = masks.causal() & masks.window(256, 0) if causal else masks.window(128)
    if opts.get("shared_qk"):
        k = q

    def run():
        if backward:
            attnkit.attention(q, k, v, mask, impl=impl, options=opts).sum().backward()
            return None
        with torch.no_grad():
            return attnkit.attention(q, k, v, mask, impl=impl, options=opts)

    return run


def _peer_runner(name: str, q, k, v, causal: bool):
    b, h, t, d = q.shape
    if name.startswith("reformer"):
        from reformer_pytorch import LSHAttention

        attn = LSHAttention(bucket_size=64, n_hashes=4, causal=causal).eval()
        qk, vv = q.reshape(b * h, t, d), v.reshape(b * h, t, d)

        def run():
            with torch.no_grad():
                return attn(qk, vv)[0].view(b, h, t, d)

        return run
    from performer_pytorch import FastAttention

    attn = FastAttention(dim_heads=d, nb_features=256, causal=causal).eval()

    def run():
        with torch.no_grad():
            return attn(q, k, v)

    return run


def peak_rss_probe(name: str, t: int, causal: bool) -> float | None:
    """Peak extra resident memory (MiB) of one forward, in a fresh process (attnkit.eval.bench.peak_memory)."""
    probe = peak_memory("bench_lsh_linear:make_runner", {"name": name, "t": t, "causal": causal},
                        extra_path=[HERE], timeout=900)
    return None if probe is None else round(probe["peak_extra_mib"], 1)


def peer_missing(name: str) -> str | None:
    """Why a peer cannot run here, or None."""
    module = "reformer_pytorch" if name.startswith("reformer") else "performer_pytorch"
    try:
        __import__(module)
    except Exception as err:  # noqa: BLE001  (any import failure means: skip this column)
        return f"{module} not importable ({type(err).__name__}: {err})"
    return None


def _available(name: str) -> str | None:
    if name.startswith(("reformer", "performer")):
        return peer_missing(name)
    impl = IMPLS[name][0]
    if impl not in attnkit.list_impls():
        return f"impl {impl!r} is not registered in this installation"
    return None


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def timed(res: Results, names: list[str], lengths: list[int], causal_modes: list[bool], repeats: int,
          memory: bool, max_sdpa: int, backward: bool = False) -> None:
    for t in lengths:
        for causal in causal_modes:
            case = {"T": t, "causal": causal}
            for name in names:
                why = _available(name)
                if why is None and name == "sdpa" and t > max_sdpa:
                    why = f"T > {max_sdpa} (--max-sdpa)"
                if why:
                    print(f"  skip {name} at T={t}: {why}", file=sys.stderr)
                    res.add(case, name, None, note=why)
                    continue
                if backward and name.startswith(("reformer", "performer")):
                    res.add(case, name, None, note="forward only")
                    continue
                run = make_runner(name, t, causal, backward=backward)
                tm = time_fn(run, warmup=1, repeats=repeats, max_seconds=60)
                mib = None
                if memory:
                    mib = peak_rss_probe(name, t, causal)
                res.add(case, name, tm.median, peak_mib=mib)
                print(f"  T={t} causal={causal} {name}: {tm.median * 1e3:.1f} ms, {mib} MiB", file=sys.stderr)


def memory_table(res: Results, case_keys: list[str]) -> str:
    impls = list(dict.fromkeys(r["impl"] for r in res.rows))
    cases: dict[tuple, dict[str, Any]] = {}
    for r in res.rows:
        cases.setdefault(tuple(r[k] for k in case_keys), {})[r["impl"]] = r.get("peak_mib")
    lines = ["| " + " | ".join([*case_keys, *[f"{i} MiB" for i in impls]]) + " |",
             "|" + "---|" * (len(case_keys) + len(impls))]
    for key, by in cases.items():
        lines.append("| " + " | ".join([*map(str, key), *["-" if by.get(i) is None else f"{by[i]:.0f}"
                                                          for i in impls]]) + " |")
    return "\n".join(lines)


def exact_shared_qk(q: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """The problem shared-QK LSH approximates: keys = normalised queries, self only as a last resort."""
    keys = F.normalize(q, dim=-1)
    t = q.shape[2]
    no_self = ~torch.eye(t, dtype=torch.bool)
    if causal:
        no_self = no_self & masks.causal().dense(t, t)
        no_self[0, 0] = True  # query 0 has only itself
    return attnkit.attention(q, keys, v, no_self, impl="sdpa")


def peer_errors(t: int, causal: bool, dist: str) -> dict[str, float]:
    """Relative error of ours vs each peer against the exact problem, same inputs."""
    q, k, v = compare_inputs(t=t, heads=HEADS, head_dim=DIM, dist=dist, seed=1)
    rel = lambda out, ref: float((out - ref).norm() / ref.norm())  # noqa: E731
    out = {}
    ref_lsh = exact_shared_qk(q, v, causal)
    ref_soft = attnkit.attention(q, k, v, masks.causal() if causal else None, impl="sdpa")
    mask = masks.causal() if causal else None
    with torch.no_grad():
        for name in ("lsh", "lsh_nodedup"):
            out[name] = rel(attnkit.attention(q, q, v, mask, impl="lsh", options=IMPLS[name][1]), ref_lsh)
        out["favor"] = rel(attnkit.attention(q, k, v, mask, impl="linear", options=IMPLS["favor"][1]), ref_soft)
        torch.manual_seed(0)
        if peer_missing("reformer") is None:
            from reformer_pytorch import LSHAttention

            b, h = q.shape[:2]
            o = LSHAttention(bucket_size=64, n_hashes=4, causal=causal)(q.reshape(b * h, t, DIM),
                                                                           v.reshape(b * h, t, DIM))[0]
            out["reformer"] = rel(o.view(b, h, t, DIM), ref_lsh)
        if peer_missing("performer") is None:
            from performer_pytorch import FastAttention

            out["performer"] = rel(FastAttention(dim_heads=DIM, nb_features=256, causal=causal)(q, k, v), ref_soft)
    return out


def minilm_qkv(max_tokens: int = 512) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | str:
    """Queries/keys/values of every layer of all-MiniLM-L6-v2 on one long text (all built-in
    paraphrase sentences joined), or the reason they are not available."""
    try:
        from attnkit.models._pairs import PARAPHRASE_PAIRS
        from attnkit.models.bert import load_minilm

        model, _ = load_minilm(max_length=max_tokens)
    except Exception as err:  # noqa: BLE001  (missing package / weights: report the row as missing)
        return f"all-MiniLM-L6-v2 not available ({type(err).__name__}: {err})"
    text = " ".join(s for pair in PARAPHRASE_PAIRS for s in pair)
    captured = []
    with torch.no_grad(), attnkit.observe(lambda call, *_: captured.append((call.q, call.k, call.v))):
        model.encode([text], max_length=max_tokens)
    return captured


def error_rows(lengths: list[int]) -> list[dict[str, Any]]:
    """Error and recall of lsh / linear / favor on gaussian, clustered and MiniLM inputs."""
    methods = {"lsh (bucket 32, 4 hashes)": ("lsh", {"bucket_size": 32, "n_hashes": 4}),
               "lsh (bucket 64, 8 hashes)": ("lsh", {"bucket_size": 64, "n_hashes": 8}),
               "linear elu+1": ("linear", {}),
               "FAVOR+ 256": ("linear", {"feature_map": "favor", "n_features": 256})}
    sources: dict[str, list] = {}
    for t in lengths:
        for dist in ("gaussian", "clustered"):
            sources[f"{dist} T={t}"] = [compare_inputs(t=t, heads=HEADS, head_dim=DIM, dist=dist, seed=2)]
    got = minilm_qkv()
    rows = []
    if isinstance(got, str):
        rows.append({"inputs": "MiniLM-L6 (real q/k)", "method": "-", "note": got})
        print(f"  MiniLM row missing: {got}", file=sys.stderr)
    else:
        sources[f"MiniLM-L6 layers 1-6, T={got[0][0].shape[2]}"] = got
    for src, triples in sources.items():
        for label, (impl, opts) in methods.items():
            errs, recs = [], []
            for q, k, v in triples:
                with torch.no_grad():
                    exact = attnkit.attention(q, k, v, impl="sdpa")
                    out = attnkit.attention(q, k, v, impl=impl, options=opts)
                errs.append(float((out - exact).norm() / exact.norm()))
                if impl == "lsh":
                    from attnkit.impls.lsh import lsh_attention, settings_from_options

                    r = lsh_attention(q, k, v, settings=settings_from_options(opts), return_weights=True)
                    idx, s = r.indices, k.shape[2]

                    def support(i0, n, idx=idx, s=s):
                        blk = idx[:, :, i0:i0 + n]
                        o = torch.zeros(*blk.shape[:3], s + 1, dtype=torch.bool)
                        return o.scatter_(-1, torch.where(blk >= 0, blk, s), True)[..., :s]

                    recs.append(mass_recall(q, k, None, q.shape[-1] ** -0.5, support)[0])
            rows.append({"inputs": src, "method": label, "rel_error": sum(errs) / len(errs),
                         "recall": sum(recs) / len(recs) if recs else 1.0})
    return rows


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", nargs="?", choices=["scaling", "memory", "peers", "error", "all"], default="all")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--no-causal", action="store_true", help="non-causal only")
    p.add_argument("--causal-only", action="store_true", help="causal only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-sdpa", type=int, default=65536, help="skip sdpa above this T")
    p.add_argument("--tag", default="", help="suffix of the JSON file name")
    p.add_argument("--quick", action="store_true", help="small sizes, every section")
    p.add_argument("--backward", action="store_true", help="time forward + backward (scaling and peers)")
    args = p.parse_args()
    causal_modes = [False] if args.no_causal else [True] if args.causal_only else [False, True]
    sections = ["scaling", "peers", "error"] if args.section == "all" else [args.section]
    suffix = f"_{args.tag}" if args.tag else ""
    what = "forward+backward" if args.backward else "forward"
    if args.backward:
        suffix += "_fwdbwd"
    print(f"B=1 H={HEADS} D={DIM} fp32 {what}, threads={torch.get_num_threads()}; ratios are to sdpa, same run")
    for section in sections:
        if section == "scaling":
            lengths = args.lengths or ([1024, 2048] if args.quick else [1024, 2048, 4096, 8192])
            res = Results("lsh_linear_scaling", meta={"heads": HEADS, "head_dim": DIM, "settings": IMPLS,
                                                      "measured": what})
            timed(res, ["sdpa", "lsh", "lsh_torch", "linear", "favor", "block_sparse"], lengths, causal_modes,
                  args.repeats, not args.no_memory, args.max_sdpa, args.backward)
            print("\n## scaling: time\n")
            print(res.table(["T", "causal"], baseline="sdpa"))
            if not args.no_memory:
                print("\n## scaling: peak extra memory\n")
                print(memory_table(res, ["T", "causal"]))
            print(f"wrote {res.save(RESULTS / f'lsh_linear_scaling{suffix}.json')}")
        elif section == "memory":  # peak memory only (no timing)
            lengths = args.lengths or ([1024, 2048] if args.quick else [1024, 4096, 16384])
            res = Results("lsh_linear_memory", meta={"heads": HEADS, "head_dim": DIM, "settings": IMPLS})
            for t in lengths:
                for causal in causal_modes:
                    for name in ["sdpa", "lsh", "linear", "favor", "block_sparse"]:
                        if _available(name) is None:
                            res.add({"T": t, "causal": causal}, name, None, peak_mib=peak_rss_probe(name, t, causal))
            print("\n## peak extra memory (MiB, one forward, fresh process)\n")
            print(memory_table(res, ["T", "causal"]))
            print(f"wrote {res.save(RESULTS / f'lsh_linear_memory{suffix}.json')}")
        elif section == "peers":
            lengths = args.lengths or ([1024] if args.quick else [1024, 4096, 8192])
            res = Results("lsh_linear_peers", meta={"heads": HEADS, "head_dim": DIM})
            names = ["sdpa", "lsh", "lsh_torch", "lsh_nodedup", "reformer", "favor", "performer"]
            timed(res, names, lengths, causal_modes, args.repeats, False, args.max_sdpa, args.backward)
            print("\n## peers: time (lsh vs reformer-pytorch, favor vs performer-pytorch)\n")
            print(res.table(["T", "causal"], baseline="sdpa"))
            err_rows = []
            for t in lengths:
                for causal in causal_modes:
                    for dist in ("gaussian", "clustered"):
                        err_rows.append({"T": t, "causal": causal, "dist": dist, **peer_errors(t, causal, dist)})
            res.meta["errors"] = err_rows
            cols = ["lsh", "lsh_nodedup", "reformer", "favor", "performer"]
            print("\n## peers: relative error vs the exact problem (same inputs)\n")
            print("| T | causal | inputs | " + " | ".join(cols) + " |\n|" + "---|" * (3 + len(cols)))
            for r in err_rows:
                vals = ["-" if c not in r else f"{r[c]:.3f}" for c in cols]
                print(f"| {r['T']} | {r['causal']} | {r['dist']} | " + " | ".join(vals) + " |")
            print(f"wrote {res.save(RESULTS / f'lsh_linear_peers{suffix}.json')}")
        else:
            lengths = args.lengths or ([512] if args.quick else [1024, 4096])
            rows = error_rows(lengths)
            res = Results("lsh_linear_error", meta={"rows": rows})
            print("\n## error and attention-mass recall vs exact softmax attention\n")
            print("| inputs | method | rel. error | mass recall |\n|---|---|---|---|")
            for r in rows:
                if "note" in r:
                    print(f"| {r['inputs']} | missing | - | - |")
                else:
                    print(f"| {r['inputs']} | {r['method']} | {r['rel_error']:.3f} | {r['recall']:.3f} |")
            print(f"wrote {res.save(RESULTS / f'lsh_linear_error{suffix}.json')}")
    print(f"environment: {environment()}")


if __name__ == "__main__":
    main()
