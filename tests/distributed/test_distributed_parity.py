"""Context-parallel attention equals single-process attention (fp64, gloo, local processes).

Each spawned group runs many cases and raises one AssertionError listing every mismatch, so a
failing case names itself in the spawn error."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.distributed import (
    ShardLayout,
    context_parallel,
    gather,
    hybrid_attention,
    hybrid_layout,
    make_2d_groups,
    record_comm,
    ring_attention,
    run_local,
    shard,
    ulysses_attention,
)
from attnkit.distributed._global_mask import piece_kind, region

T = 37  # not divisible by 2 or 4, nor by 2N chunks


def _masks(batch: int) -> dict[str, object]:
    torch.manual_seed(1)
    dense = torch.rand(T, T) > 0.4
    layout = torch.rand(3, 3) > 0.5
    return {
        "none": None,
        "causal": masks.causal(),
        "window": masks.window(5, 2),
        "causal_window": masks.causal() & masks.window(4, 0),
        "padding_dead_row": masks.padding(torch.tensor([29, 0][:batch])),
        "causal_padding": masks.causal() & masks.padding(torch.tensor([30, 11][:batch])),
        "dilated": masks.dilated(3, 2),
        "random": masks.random(0.3, seed=1),
        "global_or_window": masks.global_tokens([0, 20]) | masks.window(2),
        "not_causal": ~masks.causal(),
        "dense_tensor": dense,
        "block_layout": masks.block_sparse(layout, 16),
    }


def _inputs(hkv: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    B, H, D = 2, 4, 8
    q = torch.randn(B, H, T, D, dtype=torch.float64, generator=g)
    k = torch.randn(B, hkv, T, D, dtype=torch.float64, generator=g)
    v = torch.randn(B, hkv, T, 6, dtype=torch.float64, generator=g)
    d_out = torch.randn(B, H, T, 6, dtype=torch.float64, generator=g)
    d_lse = torch.randn(B, H, T, dtype=torch.float64, generator=g)
    return q, k, v, d_out, d_lse


def _errors(run, lay, mask, hkv: int) -> list[str]:
    """Compare ``run`` (a sharded attention) with the reference on the gathered sequence."""
    q, k, v, d_out, d_lse = _inputs(hkv)
    qs, ks, vs = (shard(t, lay).clone().requires_grad_() for t in (q, k, v))
    out, lse = run(qs, ks, vs, mask)
    ((out * shard(d_out, lay)).sum() + (torch.where(lse.isinf(), 0, lse) * shard(d_lse, lay)).sum()).backward()
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref, ref_lse = attnkit.attention(qr, kr, vr, mask, impl="reference", return_lse=True)
    ((ref * d_out).sum() + (torch.where(ref_lse.isinf(), 0, ref_lse) * d_lse).sum()).backward()
    got_lse = gather(lse, lay, length=T)
    bad = []
    if not torch.equal(got_lse.isinf(), ref_lse.isinf()):
        bad.append("lse -inf rows differ")
    pairs = {"out": (gather(out, lay, length=T), ref),
             "lse": (torch.where(ref_lse.isinf(), 0, got_lse), torch.where(ref_lse.isinf(), 0, ref_lse)),
             "dq": (gather(qs.grad, lay, length=T), qr.grad), "dk": (gather(ks.grad, lay, length=T), kr.grad),
             "dv": (gather(vs.grad, lay, length=T), vr.grad)}
    for name, (a, b) in pairs.items():
        err = (a - b).abs().max().item()
        if not err <= 1e-10:
            bad.append(f"{name} max error {err:.2e}")
    return bad


def _ring_grid(rank: int, world: int) -> None:
    failures = []
    for hkv in (4, 2, 1):  # MHA, GQA, MQA
        for name, mask in _masks(2).items():
            for lay in ("zigzag", "contiguous"):
                def run(q, k, v, m, lay=lay):
                    return ring_attention(q, k, v, m, layout=lay, return_lse=True)
                failures += [f"ring {name} {lay} Hkv={hkv}: {e}" for e in _errors(run, lay, mask, hkv)]
    for hkv in (4, 2, 1):
        for name in ("causal", "padding_dead_row", "dense_tensor"):
            def run_u(q, k, v, m):
                return ulysses_attention(q, k, v, m, layout="zigzag", impl="reference", return_lse=True)
            failures += [f"ulysses {name} Hkv={hkv}: {e}" for e in _errors(run_u, "zigzag", _masks(2)[name], hkv)]
    assert not failures, "\n".join(failures)


def _module_path(rank: int, world: int) -> None:
    import torch.distributed as dist

    from attnkit.nn import TransformerLM

    torch.manual_seed(0)
    lm = TransformerLM(50, d_model=32, nhead=4, num_layers=2, num_kv_heads=2).double()
    ids = torch.randint(0, 50, (2, T))
    ref = lm(ids)
    ref.square().mean().backward()
    ref_grads = [p.grad.clone() for p in lm.parameters()]
    failures = []
    for mode in ("ring", "ulysses"):
        lm.zero_grad()
        with context_parallel(lm, mode=mode, length=T):
            out = lm(shard(ids, "zigzag", dim=1))  # (B, T_r, V)
        (out.square().sum() / ref.numel()).backward()
        for p in lm.parameters():
            dist.all_reduce(p.grad)
        err = (gather(out, "zigzag", length=T, dim=1) - ref).abs().max().item()
        gerr = max((p.grad - g).abs().max().item() for p, g in zip(lm.parameters(), ref_grads))
        if not (err < 1e-10 and gerr < 1e-10):
            failures.append(f"module {mode}: output error {err:.1e}, gradient error {gerr:.1e}")
    with record_comm() as stats:  # bytes are counted from the tensors sent
        q, k, v, _, _ = _inputs(2)
        ring_attention(*(shard(t) for t in (q, k, v)), masks.causal())
    # step t sends the shard of rank - t (its own first): 8 bytes per fp64 element of k and v
    want = [sum(shard(t, rank=(rank - s) % world, world=world).numel() * 8 for t in (k, v)) for s in range(world - 1)]
    if stats.per_step_bytes != want:
        failures.append(f"bytes per step {stats.per_step_bytes}, expected {want}")
    assert not failures, "\n".join(failures)


def _hybrid_grid(rank: int, world: int) -> None:
    ring_group, head_group = make_2d_groups(2, world // 2)
    lay = hybrid_layout(T, 2, world // 2)
    failures = []
    for hkv in (4, 2):
        for name, mask in _masks(2).items():
            def run(q, k, v, m):
                return hybrid_attention(q, k, v, m, ring_group=ring_group, head_group=head_group, return_lse=True)
            failures += [f"hybrid {name} Hkv={hkv}: {e}" for e in _errors(run, lay, mask, hkv)]
    assert not failures, "\n".join(failures)


def _all_two(rank: int, world: int) -> None:
    _ring_grid(rank, world)
    _module_path(rank, world)


def test_two_ranks_ring_ulysses_and_module_equal_single_process():
    run_local(_all_two, 2, timeout_s=60)


@pytest.mark.slow
def test_four_ranks_ring_ulysses_hybrid_equal_single_process():
    run_local(_four, 4, timeout_s=120)


def _four(rank: int, world: int) -> None:
    _ring_grid(rank, world)
    _hybrid_grid(rank, world)
    _module_path(rank, world)


# -- single-process pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_layouts_tile_the_sequence_and_shard_round_trips(world):
    for lay in (ShardLayout.zigzag(T, world), ShardLayout.contiguous(T, world), hybrid_layout(T, world, 2)):
        pos = torch.cat([lay.positions(r) for r in range(lay.world)])
        assert sorted(pos.tolist()) == list(range(T))
        sizes = [lay.local_length(r) for r in range(lay.world)]
        assert max(sizes) - min(sizes) <= 2
        x = torch.arange(T).view(1, T)
        assert torch.equal(torch.cat([shard(x, lay, dim=1, rank=r, world=lay.world) for r in range(lay.world)], 1),
                           x[:, pos])


def test_zigzag_balances_causal_work():
    lay = ShardLayout.zigzag(1024, 4)
    work = [sum(int(p) + 1 for p in lay.positions(r)) for r in range(4)]  # allowed keys under causal
    assert max(work) / min(work) < 1.01


@pytest.mark.parametrize("name", list(_masks(2)))
def test_region_masks_are_the_global_mask_at_global_positions(name):
    mask = masks.as_mask(_masks(2)[name])
    full = torch.ones(T, T, dtype=torch.bool) if mask is None else mask.dense4(T, T)
    for q0, k0, lq, lk in ((0, 0, T, T), (5, 20, 9, 13), (30, 3, 7, 16), (20, 29, 17, 8)):
        r = region(mask, q0, k0, T, T)
        want = full[..., q0:q0 + lq, k0:k0 + lk]
        got = torch.ones(lq, lk, dtype=torch.bool) if r is None else r.dense4(lq, lk)
        assert torch.equal(got.expand_as(want), want)
        kind = piece_kind(r, lq, lk)
        assert kind == (masks.EMPTY if not want.any() else masks.FULL if want.all() else masks.PARTIAL) \
            or (kind == masks.PARTIAL)  # a safe classification may say partial
        if r is not None:  # tile classes agree with the dense grid (never wrong, at most partial)
            bm = r.blocks(lq, lk, 4, 4)
            dense = bm.to_dense()
            assert torch.equal(dense.expand_as(got.expand_as(want)), want.expand_as(dense))


def test_region_skips_fully_masked_pieces():
    assert piece_kind(region(masks.causal(), 0, 20, T, T), 10, 10) == masks.EMPTY
    assert piece_kind(region(masks.causal(), 20, 0, T, T), 10, 10) == masks.FULL
    assert piece_kind(region(masks.padding(torch.tensor([10, 12])), 0, 20, T, T), 10, 10) == masks.EMPTY
    assert piece_kind(region(masks.causal() & masks.window(3, 0), 30, 0, T, T), 7, 10) == masks.EMPTY


