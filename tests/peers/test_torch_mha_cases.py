"""PyTorch's ``nn.MultiheadAttention`` tests (``test/nn/test_multihead_attention.py`` and the
module's cases in ``test/test_nn.py``), re-expressed against ``attnkit.nn.MultiHeadAttention``
loaded with the torch module's ``state_dict``, for every exact implementation.

Re-expressed here:

* parity with the torch module over the masks of every shape and dtype it takes: bool and float
  ``attn_mask`` of shape (T, S) and (B * H, T, S), bool and float ``key_padding_mask``, both
  together, and ``is_causal`` with its causal ``attn_mask``; ``batch_first`` both ways; self- and
  cross-attention with ``kdim`` / ``vdim``; ``need_weights`` / ``average_attn_weights``;
  outputs, weights and gradients;
* ``test_multihead_attention``'s helper: a decoder state (T = 1) attending to source states
  under a random float (1, S) mask and a key padding mask, with ``add_bias_kv`` and
  ``add_zero_attn``, against a reference written in this file from the module's weights;
* ``test_multihead_attn_3d_attn_mask``: a (B * H, T, S) mask equals per-sample (T, S) masks;
* ``bias=False``, ``kdim = vdim != embed_dim`` (separate projection weights), float64 and
  bfloat16 / float16 modules, unbatched inputs, both masks at once
  (``test_multihead_self_attn_two_masks_fast_path``), and the invalid-shape cases
  (``test_multihead_attn_invalid_shape``), where attnkit raises its ``ShapeError``.

Documented differences: a query whose keys are all masked gets zero attention (output =
``o_proj`` bias, weights 0) where the torch module gives NaN when it returns weights;
``is_causal=True`` without an ``attn_mask`` is accepted by attnkit (it adds ``masks.causal()``)
where torch raises. Not re-expressed: ``static_k`` / ``static_v`` (no counterpart), nested
tensors, the fast-path dispatch (mocks of torch internals), CUDA-only dtype cases.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from peer_support import EXACT
from torch import nn

import attnkit
from attnkit.errors import ShapeError
from attnkit.nn import MultiHeadAttention

E, H, B, T, S = 16, 4, 2, 5, 7
TOL = {"atol": 1e-5, "rtol": 1e-5}
WEIGHTS_BUG = ("nn.MultiHeadAttention with need_weights=True (the torch default) asks the implementation "
               "for weights; an implementation that cannot return them (impl='sdpa') refuses, so the module "
               "only runs with need_weights=False")


def _torch_module(*, batch_first=True, kdim=None, vdim=None, bias=True, add_bias_kv=False, add_zero_attn=False,
                  dtype=torch.float32, seed=0):
    """A torch module with non-zero biases (so that they are checked too), in eval mode."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first,
                                add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, dtype=dtype)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "bias" in name and not name.startswith("bias_"):
                p.normal_()
    return ref.eval()


def _attnkit_module(ref, impl):
    """attnkit's module built with the torch module's options, loaded with its state_dict."""
    mine = MultiHeadAttention(ref.embed_dim, ref.num_heads, bias=ref.in_proj_bias is not None, kdim=ref.kdim,
                              vdim=ref.vdim, batch_first=ref.batch_first, add_bias_kv=ref.bias_k is not None,
                              add_zero_attn=ref.add_zero_attn, impl=impl, dtype=ref.out_proj.weight.dtype)
    mine.load_state_dict(ref.state_dict())
    return mine.eval()


def _skip_unless_module_runs(ref, impl, args, kwargs):
    """Skip when ``impl`` declares it cannot run the attention call the module makes. The call is
    captured from a run on the reference and checked without its weights request (returning
    weights is the module's duty: see WEIGHTS_BUG)."""
    calls = []
    probe = _attnkit_module(ref, "reference")
    with attnkit.observe(lambda call, name, out, w: calls.append(call)):
        probe(*args, **kwargs)
    assert len(calls) == 1
    why = attnkit.not_supported_reasons(attnkit.get_impl(impl), dataclasses.replace(calls[0], return_weights=False))
    if why:
        pytest.skip(f"{impl}: " + "; ".join(why))


def _weights_param(impls):
    """Implementations, each marked with the module's weights bug where it declares no weights."""
    return [pytest.param(n, marks=[] if attnkit.get_impl(n).returns_weights else
                         [pytest.mark.xfail(strict=True, reason=WEIGHTS_BUG)]) for n in impls]


LAYOUTS = {"bf_self": (True, None, None), "tf_self": (False, None, None),
           "bf_cross_kdim": (True, 6, 10), "tf_cross_kdim": (False, 6, 10)}


def _inputs(batch_first, kdim, vdim, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (lambda n, d: (B, n, d)) if batch_first else (lambda n, d: (n, B, d))
    q = torch.randn(*shape(T, E), generator=g)
    if kdim is None:
        return (q, q, q), T
    return (q, torch.randn(*shape(S, kdim), generator=g), torch.randn(*shape(S, vdim), generator=g)), S


def _torch_masks(kind, lk, seed=2):
    """``(attn_mask, key_padding_mask, is_causal)`` in the torch module's conventions (bool True =
    not allowed, float added); key 0 stays allowed for every query so no row is fully masked."""
    g = torch.Generator().manual_seed(seed)
    spare = torch.zeros(lk, dtype=torch.bool)
    spare[0] = True  # never masked

    def bool_mask(*shape):
        return (torch.rand(*shape, generator=g) < 0.4) & ~spare

    def float_mask(*shape, with_inf=True):
        m = torch.randn(*shape, generator=g)
        return m.masked_fill(bool_mask(*shape), -math.inf) if with_inf else m

    kpm_bool = bool_mask(B, lk)
    kpm_float = torch.randn(B, lk, generator=g).masked_fill(bool_mask(B, lk), -math.inf)
    causal = torch.ones(T, lk, dtype=torch.bool).triu(1)  # top-left: query i sees keys j <= i
    return {
        "none": (None, None, False),
        "bool_TS": (bool_mask(T, lk), None, False),
        "bool_BHTS": (bool_mask(B * H, T, lk), None, False),
        "float_TS": (float_mask(T, lk), None, False),
        "float_BHTS": (float_mask(B * H, T, lk, with_inf=False), None, False),
        "kpm_bool": (None, kpm_bool, False),
        "kpm_float": (None, kpm_float, False),
        "bool_TS+kpm_bool": (bool_mask(T, lk), kpm_bool, False),
        "float_TS+kpm_float": (float_mask(T, lk), kpm_float, False),
        "is_causal": (causal, None, True),
        "is_causal+kpm_bool": (causal, kpm_bool, True),
    }[kind]


MASK_KINDS = ["none", "bool_TS", "bool_BHTS", "float_TS", "float_BHTS", "kpm_bool", "kpm_float",
              "bool_TS+kpm_bool", "float_TS+kpm_float", "is_causal", "is_causal+kpm_bool"]


def _case(layout, kind):
    ref = _torch_module(batch_first=LAYOUTS[layout][0], kdim=LAYOUTS[layout][1], vdim=LAYOUTS[layout][2])
    (q, k, v), lk = _inputs(*LAYOUTS[layout])
    am, kpm, causal = _torch_masks(kind, lk)
    return ref, (q, k, v), {"attn_mask": am, "key_padding_mask": kpm, "is_causal": causal}


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", EXACT)
def test_parity_without_weights(impl, layout, kind):
    ref, args, kw = _case(layout, kind)
    kw["need_weights"] = False
    _skip_unless_module_runs(ref, impl, args, kw)
    want, w_want = ref(*args, **kw)
    got, w_got = _attnkit_module(ref, impl)(*args, **kw)
    assert w_got is None and w_want is None
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", _weights_param(EXACT))
def test_parity_with_weights(impl, layout, kind):
    ref, args, kw = _case(layout, kind)
    _skip_unless_module_runs(ref, impl, args, kw)
    mine = _attnkit_module(ref, impl)
    for average in (True, False):
        want, w_want = ref(*args, **kw, average_attn_weights=average)
        got, w_got = mine(*args, **kw, average_attn_weights=average)
        torch.testing.assert_close(got, want, **TOL)
        assert w_got.shape == w_want.shape
        torch.testing.assert_close(w_got, w_want, **TOL)


@pytest.mark.parametrize("kind", ["float_TS+kpm_float", "bool_BHTS", "is_causal"])
@pytest.mark.parametrize("impl", EXACT)
def test_backward_parity(impl, kind):
    """Gradients of the inputs and of every parameter match the torch module's."""
    ref, (x, _, _), kw = _case("bf_self", kind)
    kw["need_weights"] = False
    _skip_unless_module_runs(ref, impl, (x,), kw)
    mine = _attnkit_module(ref, impl)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x1, x1, x1, **kw)[0].square().sum().backward()
    mine(x2, **kw)[0].square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    for g_ref, lin in zip(ref.in_proj_weight.grad.chunk(3), (mine.q_proj, mine.k_proj, mine.v_proj)):
        torch.testing.assert_close(lin.weight.grad, g_ref, **TOL)
    for g_ref, lin in zip(ref.in_proj_bias.grad.chunk(3), (mine.q_proj, mine.k_proj, mine.v_proj)):
        torch.testing.assert_close(lin.bias.grad, g_ref, **TOL)
    torch.testing.assert_close(mine.o_proj.weight.grad, ref.out_proj.weight.grad, **TOL)
    torch.testing.assert_close(mine.o_proj.bias.grad, ref.out_proj.bias.grad, **TOL)


@pytest.mark.parametrize("extra", ["bias_kv", "zero_attn", "both"])
@pytest.mark.parametrize("kind", ["none", "bool_BHTS", "float_TS+kpm_float", "is_causal+kpm_bool"])
@pytest.mark.parametrize("impl", EXACT)
def test_appended_keys_parity(impl, kind, extra):
    """add_bias_kv / add_zero_attn over several queries and masks (the torch module appends the
    learned and the zero key after the inputs' keys, attendable whatever the masks say)."""
    ref = _torch_module(add_bias_kv=extra != "zero_attn", add_zero_attn=extra != "bias_kv")
    (x, _, _), _ = _inputs(True, None, None)
    am, kpm, causal = _torch_masks(kind, T)
    kw = {"attn_mask": am, "key_padding_mask": kpm, "is_causal": causal, "need_weights": False}
    _skip_unless_module_runs(ref, impl, (x,), kw)
    mine = _attnkit_module(ref, impl)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = ref(x1, x1, x1, **kw)[0], mine(x2, **kw)[0]
    torch.testing.assert_close(got, want, **TOL)
    want.square().sum().backward()
    got.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    if ref.bias_k is not None:
        torch.testing.assert_close(mine.bias_k.grad, ref.bias_k.grad, **TOL)
        torch.testing.assert_close(mine.bias_v.grad, ref.bias_v.grad, **TOL)


def _decoder_reference(ref, query, key, attn_mask, kpm):
    """test_multihead_attention's reference, written out: project with the module's weights,
    append bias_k/bias_v and the zero key, mask (float attn_mask added, kpm True = ignore; the
    appended keys always allowed), softmax (a row with nothing allowed gives zeros), combine.
    query (B, T, E), key = value (B, S, kdim); returns out (B, T, E) and weights (B, H, T, S')."""
    d = E // H
    w_q, w_k, w_v = (ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight) if ref.in_proj_weight is None \
        else ref.in_proj_weight.chunk(3)
    b_q, b_k, b_v = ref.in_proj_bias.chunk(3)
    q = (query @ w_q.T + b_q).view(B_DEC, -1, H, d).transpose(1, 2)  # (B, H, T, d)
    k = key @ w_k.T + b_k  # (B, S, E)
    v = key @ w_v.T + b_v
    add = attn_mask.expand(query.shape[1], -1)  # (T, S) of 0 / -inf
    ignore = kpm if kpm is not None else torch.zeros(key.shape[:2], dtype=torch.bool)
    if ref.bias_k is not None:
        k = torch.cat([k, ref.bias_k.expand(B_DEC, 1, E)], 1)
        v = torch.cat([v, ref.bias_v.expand(B_DEC, 1, E)], 1)
        add = torch.cat([add, add.new_zeros(add.shape[0], 1)], 1)
        ignore = torch.cat([ignore, ignore.new_zeros(B_DEC, 1)], 1)
    k = k.view(B_DEC, -1, H, d).transpose(1, 2)  # (B, H, S', d)
    v = v.view(B_DEC, -1, H, d).transpose(1, 2)
    if ref.add_zero_attn:
        k = torch.cat([k, k.new_zeros(B_DEC, H, 1, d)], 2)
        v = torch.cat([v, v.new_zeros(B_DEC, H, 1, d)], 2)
        add = torch.cat([add, add.new_zeros(add.shape[0], 1)], 1)
        ignore = torch.cat([ignore, ignore.new_zeros(B_DEC, 1)], 1)
    s = q @ k.transpose(-2, -1) / math.sqrt(d) + add  # (B, H, T, S')
    s = s.masked_fill(ignore[:, None, None, :], -math.inf)
    alive = s.amax(-1, keepdim=True) > -math.inf
    w = torch.softmax(torch.where(alive, s, 0.0), -1) * alive
    out = (w @ v).transpose(1, 2).reshape(B_DEC, -1, E)
    return out @ ref.out_proj.weight.T + ref.out_proj.bias, w


B_DEC = 3
HELPER_CASES = {  # (key padding mask, add_bias_kv, add_zero_attn, kdim == embed_dim)
    "no_masking": (False, False, False, False),
    "key_padding_mask": (True, False, False, False),
    "add_bias_kv": (False, True, False, False),
    "add_zero_attn": (False, False, True, False),
    "bias_kv_zero_attn_kpm": (True, True, True, False),
    "same_embed_dim_kpm_zero_attn": (True, False, True, True),
}


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")
@pytest.mark.parametrize("case", list(HELPER_CASES))
@pytest.mark.parametrize("impl", _weights_param(EXACT))
def test_decoder_state_against_written_reference(impl, case):
    with_kpm, bias_kv, zero_attn, same_dim = HELPER_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    for trial in range(3):
        src_len = int(torch.randint(2, 9, (1,), generator=g))
        kv_dim = E if same_dim else int(torch.randint(5, 20, (1,), generator=g))
        ref = _torch_module(kdim=kv_dim, vdim=kv_dim, add_bias_kv=bias_kv, add_zero_attn=zero_attn, seed=trial)
        query = torch.rand(B_DEC, 1, E, generator=g)  # one decoder state per batch element
        source = torch.rand(B_DEC, src_len, kv_dim, generator=g)
        attn_mask = torch.zeros(1, src_len).masked_fill(torch.rand(1, src_len, generator=g) < 0.5, -math.inf)
        kpm = (torch.rand(1, src_len, generator=g) < 0.5).expand(B_DEC, src_len).clone() if with_kpm else None
        kw = {"key_padding_mask": kpm, "attn_mask": attn_mask, "average_attn_weights": False}
        _skip_unless_module_runs(ref, impl, (query, source, source), kw)
        got, w_got = _attnkit_module(ref, impl)(query, source, source, **kw)
        with torch.no_grad():
            want, w_want = _decoder_reference(ref, query, source, attn_mask, kpm)
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(w_got, w_want, **TOL)
        t_out, t_w = ref(query, source, source, **kw)
        alive = w_want.sum(-1).amax(1) > 0  # (B, T) queries with at least one allowed key
        torch.testing.assert_close(got[alive], t_out[alive], **TOL)
        # documented difference: a query with no allowed key is NaN in torch, zero attention in attnkit
        assert torch.isnan(t_out[~alive]).all()
        torch.testing.assert_close(got[~alive], ref.out_proj.bias.expand_as(got[~alive]), **TOL)


@pytest.mark.parametrize("impl", EXACT)
def test_3d_attn_mask_equals_per_sample_2d_masks(impl):
    """A (B * H, T, S) mask built by repeating per-sample (T, S) masks gives each sample's result."""
    batch, tgt, src = 4, 2, 3
    g = torch.Generator().manual_seed(0)
    ref = _torch_module(batch_first=False)
    query, key = torch.rand(tgt, batch, E, generator=g), torch.rand(src, batch, E, generator=g)
    per_sample = torch.zeros(batch, tgt, src).masked_fill(torch.rand(batch, tgt, src, generator=g) < 0.5, -math.inf)
    mask3d = per_sample.repeat_interleave(H, dim=0)  # (B * H, T, S)
    _skip_unless_module_runs(ref, impl, (query, key, key), {"attn_mask": mask3d, "need_weights": False})
    mine = _attnkit_module(ref, impl)
    out3d = mine(query, key, key, attn_mask=mask3d, need_weights=False)[0]  # (T, B, E)
    for i in range(batch):
        one = mine(query[:, i:i + 1], key[:, i:i + 1], key[:, i:i + 1], attn_mask=per_sample[i],
                   need_weights=False)[0]
        torch.testing.assert_close(out3d[:, i:i + 1], one, **TOL)
    torch.testing.assert_close(out3d, ref(query, key, key, attn_mask=mask3d, need_weights=False)[0], **TOL)


@pytest.mark.parametrize("impl", EXACT)
def test_without_bias(impl):
    ref = _torch_module(bias=False)
    assert ref.in_proj_bias is None and ref.out_proj.bias is None
    (x, _, _), _ = _inputs(True, None, None)
    _skip_unless_module_runs(ref, impl, (x,), {"need_weights": False})
    mine = _attnkit_module(ref, impl)
    assert all(lin.bias is None for lin in (mine.q_proj, mine.k_proj, mine.v_proj, mine.o_proj))
    torch.testing.assert_close(mine(x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0], **TOL)


@pytest.mark.parametrize("impl", EXACT)
def test_separate_projection_weights_in_float64(impl):
    """kdim = vdim = 2 != embed_dim = 4: torch keeps q/k/v_proj_weight, not in_proj_weight."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(4, 4, kdim=2, vdim=2, dtype=torch.float64).eval()
    assert ref.in_proj_weight is None
    query, key = torch.rand(4, 4, 4, dtype=torch.float64), torch.rand(4, 4, 2, dtype=torch.float64)
    _skip_unless_module_runs(ref, impl, (query, key, key), {"need_weights": False})
    got = _attnkit_module(ref, impl)(query, key, key, need_weights=False)[0]
    torch.testing.assert_close(got, ref(query, key, key, need_weights=False)[0], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("impl", EXACT)
def test_float64_module_with_masks(impl):
    ref = _torch_module(dtype=torch.float64)
    (x, _, _), _ = _inputs(True, None, None)
    x = x.double()
    am, kpm, _ = _torch_masks("float_TS+kpm_float", T)
    kw = {"attn_mask": am.double(), "key_padding_mask": kpm.double(), "need_weights": False}
    _skip_unless_module_runs(ref, impl, (x,), kw)
    got = _attnkit_module(ref, impl)(x, **kw)[0]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref(x, x, x, **kw)[0], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("impl", EXACT)
def test_low_precision_module(impl, dtype):
    """Same dtype out as in; error against the float64 module within twice the torch module's own
    low-precision error (+ 1e-2)."""
    ref64 = _torch_module(dtype=torch.float64)
    ref_low = _torch_module(dtype=dtype)
    ref_low.load_state_dict(ref64.state_dict())
    (x, _, _), _ = _inputs(True, None, None)
    am, _, causal = _torch_masks("is_causal", T)
    kw = {"attn_mask": am, "is_causal": causal, "need_weights": False}
    _skip_unless_module_runs(ref_low, impl, (x.to(dtype),), kw)
    got = _attnkit_module(ref_low, impl)(x.to(dtype), **kw)[0]
    assert got.dtype == dtype
    want = ref64(*(x.double(),) * 3, **kw)[0]
    torch_low = ref_low(*(x.to(dtype),) * 3, **kw)[0]
    err, err_torch = ((y.double() - want).abs().max().item() for y in (got, torch_low))
    assert err <= 2 * err_torch + 1e-2, f"{impl}: err {err:.3g} vs torch's {err_torch:.3g}"


@pytest.mark.parametrize("impl", _weights_param(EXACT))
def test_unbatched_input(impl):
    ref = _torch_module()
    x = torch.randn(T, E, generator=torch.Generator().manual_seed(4))
    kpm = torch.tensor([False, False, True, False, False])
    _skip_unless_module_runs(ref, impl, (x, x, x), {"key_padding_mask": kpm})
    got, w_got = _attnkit_module(ref, impl)(x, x, x, key_padding_mask=kpm)
    want, w_want = ref(x, x, x, key_padding_mask=kpm)
    assert got.shape == (T, E) and w_got.shape == (T, T)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(w_got, w_want, **TOL)


def _two_masks(seed=0, src_len=5, batch=8, embed=14, heads=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, src_len, embed, generator=g)
    attn_mask = torch.rand(src_len, src_len, generator=g) < 0.5  # True = not allowed
    kpm = torch.rand(batch, src_len, generator=g) < 0.5
    dead = (attn_mask[None] | kpm[:, None, :]).all(-1)  # (B, T) queries with no allowed key
    return x, attn_mask, kpm, dead


@pytest.mark.parametrize("impl", EXACT)
def test_both_masks_at_once_without_weights(impl):
    """test_multihead_self_attn_two_masks_fast_path: a bool (T, T) attn_mask with a bool key
    padding mask; fully masked queries are zero attention in both (torch's sdpa path agrees)."""
    x, attn_mask, kpm, dead = _two_masks()
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(14, 7, batch_first=True).eval()
    kw = {"attn_mask": attn_mask, "key_padding_mask": kpm, "need_weights": False}
    assert dead.any() and not dead.all()
    _skip_unless_module_runs(ref, impl, (x, x, x), kw)
    mine = _attnkit_module(ref, impl)
    with torch.no_grad():
        got, want = mine(x, x, x, **kw)[0], ref(x, x, x, **kw)[0]
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got[dead], ref.out_proj.bias.expand_as(got[dead]), **TOL)


@pytest.mark.parametrize("impl", _weights_param(EXACT))
def test_both_masks_at_once_with_weights_documented_difference(impl):
    """With weights, torch gives NaN for a fully masked query; attnkit gives zero weights and a
    zero attention output (out = o_proj bias). Every other query matches."""
    x, attn_mask, kpm, dead = _two_masks(seed=1)
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(14, 7, batch_first=True).eval()
    kw = {"attn_mask": attn_mask, "key_padding_mask": kpm, "average_attn_weights": False}
    _skip_unless_module_runs(ref, impl, (x, x, x), kw)
    got, w_got = _attnkit_module(ref, impl)(x, x, x, **kw)
    want, w_want = ref(x, x, x, **kw)
    assert torch.isnan(want[dead]).all()  # the torch module's behaviour
    assert torch.isfinite(got).all() and torch.isfinite(w_got).all()
    torch.testing.assert_close(got[~dead], want[~dead], **TOL)
    torch.testing.assert_close(got[dead], ref.out_proj.bias.expand_as(got[dead]), **TOL)
    w_got, w_want = w_got.transpose(1, 2), w_want.transpose(1, 2)  # (B, T, H, S)
    assert (w_got[dead] == 0).all()
    torch.testing.assert_close(w_got[~dead], w_want[~dead], **TOL)


@pytest.mark.parametrize("impl", EXACT)
def test_is_causal_without_attn_mask(impl):
    """Documented difference: torch needs the causal attn_mask with is_causal=True; attnkit
    accepts the flag alone and adds ``masks.causal()``."""
    ref = _torch_module()
    (x, _, _), _ = _inputs(True, None, None)
    am, _, _ = _torch_masks("is_causal", T)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ref(x, x, x, is_causal=True)
    _skip_unless_module_runs(ref, impl, (x,), {"is_causal": True, "need_weights": False})
    got = _attnkit_module(ref, impl)(x, is_causal=True, need_weights=False)[0]
    torch.testing.assert_close(got, ref(x, x, x, attn_mask=am, is_causal=True, need_weights=False)[0], **TOL)


INVALID = {  # name: (query shape, key shape, value shape, key_padding_mask shape, attn_mask shape)
    "batched_query_2d_key": ((4, 4, 4), (3, 4), (4, 4, 4), None, None),
    "batched_query_2d_value": ((4, 4, 4), (4, 4, 4), (3, 4), None, None),
    "batched_query_1d_kpm": ((4, 4, 4), (4, 4, 4), (4, 4, 4), (4,), None),
    "batched_query_1d_attn_mask": ((4, 4, 4), (4, 4, 4), (4, 4, 4), None, (4,)),
    "unbatched_query_3d_key": ((4, 4), (4, 4, 4), (4, 4), None, None),
    "unbatched_query_3d_value": ((4, 4), (4, 4), (4, 4, 4), None, None),
    "unbatched_query_2d_kpm": ((4, 4), (4, 4), (4, 4), (1, 8), None),
    "unbatched_query_1d_attn_mask": ((4, 4), (4, 4), (4, 4), None, (4,)),
    "unbatched_query_wrong_3d_attn_mask": ((4, 4), (4, 4), (4, 4), None, (5, 4, 4)),
}


@pytest.mark.parametrize("case", list(INVALID))
@pytest.mark.parametrize("impl", EXACT)
def test_invalid_shapes_raise_shape_error(impl, case):
    """test_multihead_attn_invalid_shape: the torch module asserts; attnkit raises ShapeError
    naming the argument."""
    q_shape, k_shape, v_shape, kpm_shape, am_shape = INVALID[case]
    mine = MultiHeadAttention(4, 4, batch_first=False, impl=impl)
    kw = {}
    if kpm_shape is not None:
        kw["key_padding_mask"] = torch.zeros(kpm_shape, dtype=torch.bool)
    if am_shape is not None:
        kw["attn_mask"] = torch.zeros(am_shape, dtype=torch.bool)
    named = {"key": "key", "value": "value"}.get(case.split("_")[-1], "mask")
    with pytest.raises(ShapeError, match=named):
        mine(torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape), need_weights=False, **kw)
