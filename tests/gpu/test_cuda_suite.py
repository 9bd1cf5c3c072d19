"""Every implementation that declares CUDA support, run on CUDA tensors and checked against a CPU
float64 computation of the same call.

* Exact implementations (``spec.exact``) are compared with ``impl="reference"`` in float64 on the
  CPU: the output, the weights (``return_weights``) and log-sum-exp (``return_lse``) where the spec
  declares them, and the q / k / v gradients where it declares a backward.
* Approximate implementations are compared with their own CPU version (``triton_lsh`` with
  ``lsh``; ``lsh`` and ``linear`` with themselves) in float64, with the same options and seed. LSH
  output is discontinuous in its inputs (a rounding difference can move an item to another bucket),
  so for them a small fraction of rows may differ; the rest must agree to the dtype's tolerance.

The sweep covers random shapes (B 1-2, H 2-4 with grouped-query heads, T / S such as 77 and 200
that are not multiples of 64, D 32 / 64), the masks None, causal, window, key padding and BigBird,
and the dtypes float32 / bfloat16 / float16 each spec allows. A combination an implementation
refuses is skipped with the refusal's reason (which must be non-empty).

Without CUDA the module is skipped. ``ATTNKIT_TEST_DEVICE=cpu`` runs the same sweep on CPU tensors
(implementations that refuse the CPU are skipped there)::

    ATTNKIT_TEST_DEVICE=cpu python -m pytest tests/gpu/test_cuda_suite.py -q
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.masks import patterns
from attnkit.registry import get_impl

DEVICE = os.environ.get("ATTNKIT_TEST_DEVICE", "cuda").strip().lower()
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"ATTNKIT_TEST_DEVICE must be 'cuda' or 'cpu'; got {DEVICE!r}")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("CUDA is not available (set ATTNKIT_TEST_DEVICE=cpu to run this sweep on the CPU)",
                allow_module_level=True)

EXPECTED_GPU_IMPLS = ("triton_block_sparse", "triton_lsh")
IMPORT_ERRORS: dict[str, str] = {}


def _load_gpu_impl_modules() -> None:
    """Import every ``attnkit.impls.triton*`` module, so implementations that exist but are not yet
    imported by ``attnkit.impls`` register themselves. A module that fails to import is recorded
    (and reported by :func:`test_expected_gpu_impls_registered`), never fatal."""
    import attnkit.impls as impls_pkg

    for info in pkgutil.iter_modules(impls_pkg.__path__):
        if info.name.startswith("triton"):
            try:
                importlib.import_module(f"attnkit.impls.{info.name}")
            except Exception as exc:  # a module under construction must not break the sweep
                IMPORT_ERRORS[info.name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"attnkit.impls.{info.name} failed to import: {exc}", stacklevel=1)


_load_gpu_impl_modules()

# ------------------------------------------------------------------------------------------------
# the sweep
# ------------------------------------------------------------------------------------------------

# relative tolerance (max abs error over max abs of the float64 result), per dtype
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
GRAD_FACTOR = 2.0  # gradients accumulate over more terms than the output
# approximate implementations: rows allowed to differ beyond tolerance (bucket moves under rounding)
ROW_FRACTION = {torch.float32: 0.01, torch.float16: 0.06, torch.bfloat16: 0.06}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Shape:
    b: int
    h: int
    hkv: int
    t: int
    s: int
    d: int

    def __str__(self) -> str:
        kv = f"/{self.hkv}" if self.hkv != self.h else ""
        return f"B{self.b}H{self.h}{kv}T{self.t}S{self.s}D{self.d}"


SHAPES = [
    Shape(1, 2, 2, 77, 77, 32),
    Shape(2, 4, 2, 200, 200, 64),
    Shape(1, 4, 1, 64, 200, 64),
    Shape(2, 2, 2, 130, 77, 32),  # T > S: bottom-right causal leaves the first rows without keys
    Shape(1, 3, 3, 200, 200, 32),
]


def _padding(sh: Shape) -> masks.Mask:
    lengths = [sh.s - 13, max(1, sh.s // 2)][: sh.b]
    return masks.padding(lengths)


MASKS: dict[str, Callable[[Shape], masks.Mask | None]] = {
    "none": lambda sh: None,
    "causal": lambda sh: masks.causal(),
    "window": lambda sh: masks.window(24, 8),
    "padding": _padding,
    "bigbird": lambda sh: patterns.bigbird(16, window_blocks=3, global_blocks=2, random_blocks=1, seed=3),
}

# options of the approximate implementations, cycled over the cases (names a spec does not accept
# are dropped)
APPROX_OPTIONS = [
    {"bucket_size": 32, "n_hashes": 2, "seed": 5, "n_features": 64},
    {"bucket_size": 16, "n_hashes": 3, "seed": 1, "shared_qk": True, "dedup": False, "n_features": 32},
    {"bucket_size": 32, "n_hashes": 1, "seed": 7, "dedup": True},
]


@dataclass(frozen=True)
class Case:
    impl: str
    shape: Shape
    mask_name: str
    dtype: torch.dtype
    seed: int
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def id(self) -> str:
        opts = "-" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())) if self.options else ""
        return f"{self.impl}-{self.mask_name}-{DTYPE_NAMES[self.dtype]}-{self.shape}{opts}"


def _device_impls() -> list[str]:
    return [n for n in attnkit.list_impls() if "cuda" in get_impl(n).devices]


def _cases() -> list[Case]:
    cases = []
    for name in _device_impls():
        spec = get_impl(name)
        dtypes = [dt for dt in (torch.float32, torch.bfloat16, torch.float16) if dt in spec.dtypes]
        n = 0
        for mi, mask_name in enumerate(MASKS):
            for di, dtype in enumerate(dtypes):
                shape = SHAPES[(mi + 2 * di) % len(SHAPES)]
                opts = {}
                if not spec.exact:
                    opts = {k: v for k, v in APPROX_OPTIONS[n % len(APPROX_OPTIONS)].items() if k in spec.options}
                    if opts.get("shared_qk") and shape.t != shape.s:
                        shape = next(s for s in SHAPES if s.t == s.s and s.d == shape.d)
                cases.append(Case(name, shape, mask_name, dtype, seed=1000 + 17 * n, options=opts))
                n += 1
    return cases


CASES = _cases()

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _inputs(case: Case, hkv: int) -> tuple[torch.Tensor, ...]:
    """q, k, v, grad_out and grad_lse on the CPU in float32 (the same values for every dtype)."""
    g = torch.Generator().manual_seed(case.seed)
    sh = case.shape
    q = torch.randn(sh.b, sh.h, sh.t, sh.d, generator=g)
    k = torch.randn(sh.b, hkv, sh.s, sh.d, generator=g)
    v = torch.randn(sh.b, hkv, sh.s, sh.d, generator=g)
    go = torch.randn(sh.b, sh.h, sh.t, sh.d, generator=g)
    gl = torch.randn(sh.b, sh.h, sh.t, generator=g)
    return q, k, v, go, gl


def _leaf(x: torch.Tensor, dtype: torch.dtype, device: str, grad: bool) -> torch.Tensor:
    return x.to(dtype).to(device).detach().requires_grad_(grad)


def _run(name: str, q, k, v, mask, *, options, grad: bool, lse: bool, go, gl, lse_in_loss: bool):
    """One call: ``(out, lse or None, (dq, dk, dv) or None)``."""
    res = attnkit.attention(q, k, v, mask, impl=name, return_lse=lse, options=options or None)
    out, l_ = (res if lse else (res, None))
    grads = None
    if grad:
        loss = (out.float() * go.to(out.device, torch.float32)).sum()
        if lse and lse_in_loss:
            loss = loss + (l_.float() * gl.to(l_.device, torch.float32)).sum()
        grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True)  # shared_qk ignores k
        grads = tuple(torch.zeros_like(x) if gr is None else gr for x, gr in zip((q, k, v), grads))
    return out, l_, grads


def _refusal(name: str, q, k, v, mask, **kw) -> list[str]:
    report = attnkit.explain_dispatch(q, k, v, mask, impl=name, **kw)
    why = report.reasons.get(name, [])
    assert report.chosen == name or why, f"{name} was neither chosen nor refused with a reason: {report}"
    if why:
        assert all(isinstance(r, str) and r.strip() for r in why), f"{name} refused without a reason: {why!r}"
    return why


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    scale = want.abs().max().clamp_min(1e-6)
    return float((got - want).abs().max() / scale)


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, tol: float, approx: bool, dtype: torch.dtype,
             row_dims: int = 1) -> None:
    """Assert ``got`` matches ``want``: exactly-computed results over all elements; approximate
    ones row by row, a small fraction of rows being allowed to differ."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    g, w = got.detach().cpu().double(), want.detach().cpu().double()
    assert not torch.isnan(g).any(), f"{what}: NaN where the float64 result is {w[torch.isnan(g)][:4].tolist()}"
    inf = torch.isinf(w)
    assert torch.equal(torch.isinf(g), inf) and torch.equal(g[inf], w[inf]), (
        f"{what}: infinities differ ({int(torch.isinf(g).sum())} here, {int(inf.sum())} in float64)")
    g, w = g.masked_fill(inf, 0.0), w.masked_fill(inf, 0.0)
    scale = float(w.abs().max().clamp_min(1e-6))
    if not approx:
        err = float((g - w).abs().max()) / scale
        assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"
        return
    rows = (g - w).abs()
    if row_dims:
        rows = rows.flatten(-row_dims).amax(-1)
    rows = rows.flatten() / scale
    bad = float((rows > tol).float().mean())
    assert bad <= ROW_FRACTION[dtype], (
        f"{what}: {bad:.2%} of rows differ beyond {tol:.3g} (allowed {ROW_FRACTION[dtype]:.0%}); "
        f"max {float(rows.max()):.3g}, median {float(rows.median()):.3g}")
    assert float(rows.median()) <= tol, f"{what}: median row error {float(rows.median()):.3g} > {tol:.3g}"


def _cpu_twin(name: str) -> str:
    """The CPU implementation an approximate implementation is checked against."""
    twin = name.removeprefix("triton_")  # a Triton kernel is checked against the PyTorch implementation
    if twin in attnkit.list_impls() and "cpu" in get_impl(twin).devices and torch.float64 in get_impl(twin).dtypes:
        return twin
    pytest.skip(f"{name}: no float64 CPU implementation {twin!r} to compare with")


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED_GPU_IMPLS)
def test_expected_gpu_impls_registered(name):
    """The GPU implementations this suite exists for: skipped (with the reason) until registered."""
    if name not in attnkit.list_impls():
        errors = "; ".join(f"{m}: {e}" for m, e in IMPORT_ERRORS.items())
        pytest.skip(f"{name} is not registered" + (f" (import errors: {errors})" if errors else ""))
    spec = get_impl(name)
    assert "cuda" in spec.devices, f"{name} does not declare cuda in its devices {sorted(spec.devices)}"
    assert any(c.impl == name for c in CASES)
    if DEVICE == "cuda":
        assert spec.available is None or spec.available() is None, f"{name} unavailable: {spec.available()}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_cpu_float64(case: Case):
    spec = get_impl(case.impl)
    if spec.available is not None and (why := spec.available()):
        assert why.strip(), f"{case.impl}: available() returned an empty reason"
        pytest.skip(f"{case.impl} unavailable here: {why}")
    if DEVICE not in spec.devices:
        pytest.skip(f"{case.impl} does not run on {DEVICE} (devices {sorted(spec.devices)})")
    sh, dtype, approx = case.shape, case.dtype, not spec.exact
    mask = MASKS[case.mask_name](sh)
    kw = {"options": case.options or None}

    # the main call: forward with the gradients and the log-sum-exp the spec declares; a call with
    # grouped-query heads that the implementation refuses is retried with as many kv heads as heads
    hkv, why = sh.hkv, None
    for hkv in dict.fromkeys((sh.hkv, sh.h)):
        q, k, v, go, gl = _inputs(case, hkv)
        dq, dk, dv = (_leaf(x, dtype, DEVICE, spec.grad) for x in (q, k, v))
        why = _refusal(case.impl, dq, dk, dv, mask, return_lse=spec.returns_lse, **kw)
        if not why:
            break
    if why:
        pytest.skip(f"{case.impl} refuses: {'; '.join(why)}")

    # the float64 CPU result: the reference for exact implementations, the CPU twin for approximate ones
    ref_name = _cpu_twin(case.impl) if approx else "reference"
    ref_spec = get_impl(ref_name)
    cq, ck, cv = (x.to(dtype).double().requires_grad_(True) for x in (q, k, v))
    ref_lse = ref_spec.returns_lse and spec.returns_lse
    dense = mask.dense(sh.t, sh.s) if mask is not None else torch.ones(sh.t, sh.s, dtype=torch.bool)
    dense = dense.expand(sh.b, sh.h, sh.t, sh.s)
    lse_in_loss = bool(dense.any(-1).all())  # a row without keys has lse -inf: keep it out of the loss
    want, want_lse, want_grads = _run(ref_name, cq, ck, cv, mask, options=kw["options"] if approx else None,
                                      grad=spec.grad, lse=ref_lse, go=go, gl=gl, lse_in_loss=lse_in_loss)
    got, got_lse, got_grads = _run(case.impl, dq, dk, dv, mask, options=kw["options"], grad=spec.grad,
                                   lse=spec.returns_lse, go=go, gl=gl, lse_in_loss=lse_in_loss)

    tol = TOL[dtype]
    assert got.device.type == DEVICE and got.dtype == dtype, f"output on {got.device} as {got.dtype}"
    _compare("out", got, want, tol, approx, dtype)
    if spec.returns_lse:
        assert got_lse is not None and got_lse.dtype == torch.float32, f"lse dtype {getattr(got_lse, 'dtype', None)}"
        if want_lse is not None:
            # lse is about log(S) in size: compare in absolute terms scaled by the dtype's tolerance
            _compare("lse", got_lse, want_lse, tol * 4, approx, dtype, row_dims=0)
    if spec.grad:
        for label, g_, w_ in zip(("dq", "dk", "dv"), got_grads, want_grads):
            assert g_.dtype == dtype, f"{label} dtype {g_.dtype}"
            _compare(label, g_, w_, tol * GRAD_FACTOR, approx, dtype)

    # the weights, in a call of their own (no gradient)
    if spec.returns_weights:
        nq, nk, nv = (x.detach() for x in (dq, dk, dv))
        why_w = _refusal(case.impl, nq, nk, nv, mask, return_weights=True, **kw)
        if why_w:
            return  # refused with a reason (checked by _refusal)
        with torch.no_grad():
            _, w_got = attnkit.attention(nq, nk, nv, mask, impl=case.impl, return_weights=True, options=kw["options"])
            _, w_want = attnkit.attention(cq.detach(), ck.detach(), cv.detach(), mask, impl=ref_name,
                                          return_weights=True, options=kw["options"] if approx else None)
        assert w_got.device.type == DEVICE
        _compare("weights", w_got, w_want, tol, approx, dtype)
        if not approx:
            allowed = dense.to(w_got.device)
            assert not bool(w_got[~allowed].any()), "weights on masked-out keys"


def test_sweep_covers_every_device_impl():
    """Each implementation that declares CUDA has cases in every mask and in each dtype it allows."""
    names = _device_impls()
    assert "reference" in names
    for name in names:
        mine = [c for c in CASES if c.impl == name]
        assert {c.mask_name for c in mine} == set(MASKS), name
        allowed = {dt for dt in (torch.float32, torch.bfloat16, torch.float16) if dt in get_impl(name).dtypes}
        assert {c.dtype for c in mine} == allowed, name
