"""The registry and the dispatcher: capability-driven choice, explanations, scoped selection."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.registry import ImplSpec, register_impl


def qkv(t=6):
    return torch.randn(1, 2, t, 8), torch.randn(1, 2, t, 8), torch.randn(1, 2, t, 8)


def test_registry_lists_builtins_in_priority_order():
    names = attnkit.list_impls()
    assert {"reference", "sdpa"} <= set(names)
    prios = [attnkit.get_impl(n).priority for n in names]
    assert prios == sorted(prios)
    assert names[-1] == "reference"  # the oracle is the last resort


def test_auto_prefers_fast_impl_and_explains():
    q, k, v = qkv()
    report = attnkit.explain_dispatch(q, k, v, masks.causal())
    assert report.chosen != "reference"
    assert report.reasons[report.chosen] == []
    text = str(report)
    assert f"-> {report.chosen}" in text and "q (1, 2, 6, 8)" in text


@pytest.mark.parametrize("kwargs,refusal", [
    (dict(weight="entmax15"), "weight 'entmax15' not in ['softmax']"),
    (dict(return_weights=True), "cannot return weights"),
    (dict(score_mods=(attnkit.scores.softcap(2.0),)), "only additive score modifiers"),
])
def test_auto_falls_to_capable_impl_with_reasons(kwargs, refusal):
    q, k, v = qkv()
    report = attnkit.explain_dispatch(q, k, v, **kwargs)
    assert refusal in " ".join(report.reasons["sdpa"])
    assert report.chosen is not None and report.chosen != "sdpa"


def test_use_impls_scopes_and_restores():
    q, k, v = qkv()
    before = attnkit.explain_dispatch(q, k, v).chosen
    with attnkit.use_impls(["reference"]):
        assert attnkit.explain_dispatch(q, k, v).chosen == "reference"
        with attnkit.use_impls(["sdpa", "reference"]):
            assert attnkit.explain_dispatch(q, k, v).chosen == "sdpa"
        assert attnkit.explain_dispatch(q, k, v).chosen == "reference"
    assert attnkit.explain_dispatch(q, k, v).chosen == before
    with pytest.raises(attnkit.UnknownNameError):
        with attnkit.use_impls(["refrence"]):
            pass


def test_auto_never_picks_an_approximation():
    for name in attnkit.list_impls():
        spec = attnkit.get_impl(name)
        if not spec.exact:
            q, k, v = qkv()
            assert attnkit.explain_dispatch(q, k, v).chosen != name


def test_register_custom_impl_and_duplicate_name():
    calls = []

    def mine(call):
        calls.append(call.lq)
        return attnkit.get_impl("reference").fn(call)

    spec = ImplSpec(name="test_only_impl", fn=mine, description="test", priority=100000)
    register_impl(spec)
    q, k, v = qkv()
    out = attnkit.attention(q, k, v, impl="test_only_impl")
    assert calls == [6] and out.shape == (1, 2, 6, 8)
    with pytest.raises(ValueError, match="already taken"):
        register_impl(spec)


def test_impl_table_mentions_every_impl():
    table = attnkit.impl_table()
    for name in attnkit.list_impls():
        assert f"| {name} |" in table


def test_observe_captures_weights_from_any_impl():
    q, k, v = qkv()
    seen = []
    with attnkit.observe(lambda call, name, out, w: seen.append((name, w))):
        out = attnkit.attention(q, k, v, masks.causal(), impl="sdpa")
    assert len(seen) == 1 and seen[0][0] == "sdpa"
    ref_out, ref_w = attnkit.attention(q, k, v, masks.causal(), impl="reference", return_weights=True)
    torch.testing.assert_close(seen[0][1], ref_w)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    attnkit.attention(q, k, v)
    assert len(seen) == 1  # the observer is gone after the block


def test_dropout_reference_is_unbiased_and_seeded():
    q, k, v = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 64, 8), torch.ones(1, 1, 64, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = attnkit.attention(q, k, v, dropout_p=0.5, impl="reference", generator=g1)
    b = attnkit.attention(q, k, v, dropout_p=0.5, impl="reference", generator=g2)
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.ones_like(a))  # something was dropped
    assert abs(a.mean().item() - 1.0) < 0.2  # uniform weights 1/64, kept ones scaled by 2
