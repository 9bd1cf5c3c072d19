"""``attnkit bench``: a quick exact-attention benchmark (implementations against sdpa), printed as a
table. sdpa is always measured, in the same run, as the baseline of the ratios."""

from __future__ import annotations

import argparse
import sys

from ._args import UsageError, impl_names, int_range, name_in, output_file, positive_int

BASELINE = "sdpa"
MAX_LENGTH = 1 << 19  # 8 heads x T x 64 = 2**28 elements per input tensor (1 GiB in float32)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="quick benchmark: implementations timed against sdpa in one run")
    p.add_argument("--lengths", type=int_range(1, MAX_LENGTH), nargs="+", default=[256, 512, 1024], metavar="T",
                   help=f"sequence lengths T, 1 to {MAX_LENGTH} (default 256 512 1024)")
    p.add_argument("--impls", nargs="+", type=name_in(impl_names, "implementation"), default=["reference"],
                   metavar="IMPL", help=f"implementations to time against {BASELINE}, which always runs "
                                        f"(default: reference)")
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per case; the median is shown")
    p.add_argument("--json", type=output_file(["json"], "JSON file"), default=None,
                   help="write the results here as JSON")
    p.set_defaults(func=run)


def _check(impls: list[str], lengths: list[int], backward: bool) -> None:
    """Refuse, before timing anything, an implementation that cannot run one of the cases."""
    import torch

    from .. import masks
    from ..call import make_call
    from ..dispatch import not_supported_reasons
    from ..registry import get_impl

    for t in lengths:
        probe = torch.zeros((), requires_grad=backward).expand(1, 8, t, 64)  # (B, H, T, D), no memory
        for mask in (None, masks.causal()):
            for impl in impls:
                reasons = not_supported_reasons(get_impl(impl), make_call(probe, probe, probe, mask))
                if reasons:
                    raise UsageError(f"--impls {impl} cannot run T={t}{' causal' if mask else ''}"
                                     f"{' with backward' if backward else ''}: {'; '.join(reasons)}; "
                                     f"expected an implementation that supports it")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..eval.bench import Results
    from ..eval.exact import run_exact

    impls = list(dict.fromkeys([BASELINE, *args.impls]))  # the baseline first, each name once
    lengths = list(dict.fromkeys(args.lengths))
    _check(impls, lengths, args.backward)
    res = None
    for t in tqdm(lengths, desc="bench", unit="length", file=sys.stderr, leave=False):
        part = run_exact([t], impls=impls, backward=args.backward, repeats=args.repeats)
        res = part if res is None else Results(res.name, res.rows + part.rows, res.meta)
    print(f"exact attention, B=1 H=8 D=64 fp32, {'fwd+bwd' if args.backward else 'forward'}, "
          f"median of {args.repeats}; ratio = time / {BASELINE} time (same run)")
    print(res.table(["T", "causal"], baseline=BASELINE))
    if args.json:
        print(f"wrote {res.save(args.json)}")
    return 0
