"""``attnkit compare``: accuracy, recall, time and memory of approximate attention against exact.

Synthetic inputs (default)::

    attnkit compare --length 2048 --dist clustered --impls sdpa lsh linear favor

On a real model (queries/keys captured from all-MiniLM-L6-v2)::

    attnkit compare --model minilm --json results.json
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from ._args import UsageError, impl_names, int_range, name_in, non_negative_int, output_file, positive_int, shown

IMPL_CHOICES = ("sdpa", "reference", "lsh", "linear", "favor")
MAX_REFERENCE_ELEMENTS = 1 << 30  # B x H x T x T scores the dense reference may hold (4 GiB in float32)
MAX_INPUT_ELEMENTS = 1 << 28  # B x H x T x D elements of each of q, k, v (1 GiB in float32)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="approximate attention (lsh, linear) against exact: error, recall, time, memory",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=_model_name, default=None, help="run on a real model instead (e.g. 'minilm')")
    p.add_argument("--length", "-T", type=positive_int, default=1024, help="sequence length T (synthetic)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--dim", type=positive_int, default=64, help="head dim D")
    p.add_argument("--dist", choices=["gaussian", "clustered"], default="gaussian", help="input distribution")
    p.add_argument("--causal", action="store_true", help="causal mask")
    p.add_argument("--impls", nargs="+", type=name_in(lambda: impl_names(extra=["favor"]), "method"),
                   default=["sdpa", "lsh", "linear", "favor"], metavar="IMPL",
                   help=f"methods to compare; any registered impl name, 'favor' = linear with FAVOR+ "
                        f"(default: sdpa lsh linear favor; choices include {', '.join(IMPL_CHOICES)})")
    p.add_argument("--bucket-size", type=positive_int, default=64, help="lsh: chunk length")
    p.add_argument("--n-hashes", type=int_range(1, 64), default=4, help="lsh: hash rounds (1 to 64)")
    p.add_argument("--shared-qk", action="store_true", help="lsh: keys = normalised queries")
    p.add_argument("--n-features", type=int_range(1, 1 << 16), default=256, help="favor: random features (1 to 65536)")
    p.add_argument("--chunk-size", type=positive_int, default=64, help="linear: causal chunk length")
    p.add_argument("--seed", type=non_negative_int, default=0, help="input and hashing / feature seed")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (median)")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (one process per method)")
    p.add_argument("--json", type=output_file(["json"], "JSON file"), default=None,
                   help="write the results here as JSON")
    p.set_defaults(func=run)


def _model_name(text: str) -> str:
    try:
        from ..eval.model_approx import MODELS
    except ImportError:  # reported when the comparison runs
        return text
    return name_in(MODELS, "model")(text)


def candidates(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """The ``(label, impl, options)`` list the arguments ask for."""
    out = []
    for name in args.impls:
        if name == "lsh":
            opts = {"bucket_size": args.bucket_size, "n_hashes": args.n_hashes, "shared_qk": args.shared_qk,
                    "seed": args.seed}
            out.append((f"lsh (bucket {args.bucket_size}, {args.n_hashes} hashes)", "lsh", opts))
        elif name == "linear":
            out.append(("linear (elu+1)", "linear", {"chunk_size": args.chunk_size}))
        elif name == "favor":
            opts = {"feature_map": "favor", "n_features": args.n_features, "chunk_size": args.chunk_size,
                    "seed": args.seed}
            out.append((f"linear (FAVOR+, {args.n_features} features)", "linear", opts))
        else:
            out.append((name, name, {}))
    return out


def check_candidates(args: argparse.Namespace) -> None:
    """Refuse, before any work, a method that cannot run the problem the arguments describe."""
    import torch

    from .. import masks
    from ..call import make_call
    from ..dispatch import not_supported_reasons
    from ..registry import get_impl

    if len(set(args.impls)) != len(args.impls):
        twice = sorted({n for n in args.impls if args.impls.count(n) > 1})
        raise UsageError(f"--impls {' '.join(args.impls)} names {', '.join(twice)} twice; expected each method once")
    elements = args.batch * args.heads * args.length * args.dim
    if elements > MAX_INPUT_ELEMENTS:
        raise UsageError(f"--batch {args.batch} --heads {args.heads} --length {args.length} --dim {args.dim} give "
                         f"{elements} elements per input tensor; expected at most {MAX_INPUT_ELEMENTS}")
    scores = args.batch * args.heads * args.length * args.length
    if "reference" in args.impls and scores > MAX_REFERENCE_ELEMENTS:
        raise UsageError(f"--impls reference at --batch {args.batch} --heads {args.heads} --length {args.length} "
                         f"holds {scores} scores; expected at most {MAX_REFERENCE_ELEMENTS} "
                         f"(drop reference or use a shorter --length)")
    shape = (args.batch, args.heads, args.length, args.dim)
    probe = torch.zeros(()).expand(shape)  # (B, H, T, D) of the right size, no memory
    mask = masks.causal() if args.causal else None
    for name, (_, impl, options) in zip(args.impls, candidates(args)):
        reasons = not_supported_reasons(get_impl(impl), make_call(probe, probe, probe, mask, options=options))
        if reasons:
            raise UsageError(f"--impls {name} cannot run B={args.batch} H={args.heads} T={args.length} D={args.dim}"
                             f"{' causal' if args.causal else ''}: {'; '.join(reasons)}; "
                             f"expected a method that supports it")


def _run_model(args: argparse.Namespace) -> int:
    try:
        mod = importlib.import_module("attnkit.eval.model_approx")
    except ImportError as err:
        raise UsageError(f"--model {shown(args.model)} needs attnkit.eval.model_approx, which is not available "
                         f"({err}); expected it installed") from err
    print(mod.run_model_comparison(model=args.model, json_path=None if args.json is None else str(args.json)))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        return _run_model(args)
    check_candidates(args)
    import torch

    from .. import masks
    from ..eval.approx import compare, compare_inputs

    q, k, v = compare_inputs(batch=args.batch, heads=args.heads, t=args.length, head_dim=args.dim,
                             dist=args.dist, seed=args.seed)
    if args.shared_qk:
        k = torch.nn.functional.normalize(q, dim=-1)  # the problem shared-QK LSH approximates
    mask = masks.causal() if args.causal else None
    res = compare(q, k, v, candidates(args), mask, repeats=args.repeats, memory=args.memory)
    print(f"B={args.batch} H={args.heads} T={args.length} D={args.dim} {args.dist} inputs, "
          f"{'causal' if args.causal else 'no mask'}, threads={torch.get_num_threads()}; "
          f"error vs exact attention, time ratio to the first method (same run)")
    print(res.table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args) | {"func": None}, **res.to_dict()}, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0
