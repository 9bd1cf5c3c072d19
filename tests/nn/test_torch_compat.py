"""The PyTorch edge of MultiHeadAttention: the traps of moving from torch.nn.MultiheadAttention
(mask polarity, (T, B, E) layout after loading a PyTorch checkpoint, need_weights with an
implementation that has no weights) each refused or reported, and long padded inputs."""

import warnings

import pytest
import torch
from torch import nn

import attnkit
from attnkit import masks
from attnkit.errors import DTypeError, ShapeError, UnsupportedError
from attnkit.nn import MultiHeadAttention, TransformerEncoderLayer, torch_masks_to_attnkit
from attnkit.nn.torch_compat import torch_masks_to_attnkit as compat_fn

E, H, B, T = 16, 4, 2, 5
TOL = dict(atol=1e-5, rtol=1e-5)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_public_names_stay_importable_from_attnkit_nn():
    assert torch_masks_to_attnkit is compat_fn
    assert "torch_masks_to_attnkit" in attnkit.nn.__all__ and "MultiHeadAttention" in attnkit.nn.__all__


# -- need_weights ---------------------------------------------------------------------------------


def test_need_weights_default_runs_on_sdpa_with_recomputed_weights():
    """torch's default need_weights=True works with impl="sdpa": the output comes from the kernel,
    the weights are recomputed (sdpa never exposes its own)."""
    mha = MultiHeadAttention(E, H, impl="sdpa")
    x = torch.randn(B, T, E)
    out, w = mha(x)
    ref = MultiHeadAttention(E, H, impl="reference")
    ref.load_state_dict(mha.state_dict())
    out_ref, w_ref = ref(x)
    assert w.shape == w_ref.shape == (B, T, T)
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(w, w_ref, **TOL)


def test_need_weights_default_with_an_impl_without_weights_names_the_fix(monkeypatch):
    from attnkit import registry
    from attnkit.registry import ImplSpec, register_impl

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_impl(ImplSpec(name="test_no_weights", fn=attnkit.get_impl("reference").fn, description="test",
                           returns_weights=False, priority=123456))
    mha = MultiHeadAttention(E, H, impl="test_no_weights")
    x = torch.randn(B, T, E)
    with pytest.raises(UnsupportedError) as err:
        mha(x)
    assert str(err.value) == ("need_weights=True (the default) asks for weights, which impl 'test_no_weights' "
                              "cannot return; pass need_weights=False")
    out, w = mha(x, need_weights=False)
    assert w is None and out.shape == (B, T, E)


def test_need_weights_check_leaves_unknown_names_to_the_registry():
    with pytest.raises(attnkit.UnknownNameError, match="no-such-impl"):
        MultiHeadAttention(E, H, impl="no-such-impl")(torch.randn(B, T, E), need_weights=False)


# -- mask polarity --------------------------------------------------------------------------------


def test_mask_takes_attnkit_convention_and_attn_mask_takes_pytorchs():
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(B, T, E)
    allowed = torch.rand(T, T) < 0.6
    allowed[:, 0] = True  # every query keeps a key
    want = mha(x, attn_mask=~allowed, average_attn_weights=False)
    got = _no_warnings(mha, x, mask=allowed, average_attn_weights=False)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert ((got[1] > 0) == allowed).all()  # True = attend: exactly the allowed pairs get weight
    per_batch = allowed.expand(B, 1, T, T).clone()
    per_batch[1, 0, :, 1:] = False  # the second sequence sees only its first key
    _, w = mha(x, mask=per_batch, average_attn_weights=False)
    assert (w[1, :, :, 1:] == 0).all() and ((w[0] > 0) == allowed).all()


def test_attnkit_style_bool_mask_passed_as_attn_mask_warns():
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(B, T, E)
    tril = torch.ones(T, T, dtype=torch.bool).tril()  # True = attend, inverted under PyTorch's reading
    with pytest.warns(UserWarning, match="pass it as mask= instead") as rec:
        mha(x, attn_mask=tril)
    assert rec[0].filename == __file__  # the warning points at the caller's line
    _no_warnings(mha, x, attn_mask=~tril)  # the right polarity: no warning
    _no_warnings(mha, x, attn_mask=masks.causal())  # an attnkit Mask cannot be misread


def test_mask_argument_refuses_ambiguous_tensors():
    mha = MultiHeadAttention(E, H)
    x = torch.randn(B, T, E)
    with pytest.raises(DTypeError, match="True = attend; got dtype torch.float32"):
        mha(x, mask=torch.zeros(T, T))
    with pytest.raises(ShapeError, match="3-D mask is ambiguous"):
        mha(x, mask=torch.ones(B, T, T, dtype=torch.bool))
    with pytest.raises(DTypeError, match="got list"):
        mha(x, mask=[[True]])


# -- layout after loading a PyTorch checkpoint ----------------------------------------------------


def test_loading_a_torch_state_dict_without_stating_the_layout_warns():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(E, H).eval()  # PyTorch's default layout: (T, B, E)
    with pytest.warns(UserWarning, match="batch_first") as rec:
        MultiHeadAttention(E, H).load_state_dict(ref.state_dict())
    assert rec[0].filename == __file__
    x = torch.randn(T, B, E)
    tbe = _no_warnings(MultiHeadAttention(E, H, batch_first=False).eval().load_state_dict, ref.state_dict())
    assert not tbe.missing_keys and not tbe.unexpected_keys
    mine = MultiHeadAttention(E, H, batch_first=False).eval()
    _no_warnings(mine.load_state_dict, ref.state_dict())
    torch.testing.assert_close(mine(x)[0], ref(x, x, x)[0], **TOL)
    _no_warnings(MultiHeadAttention(E, H, batch_first=True).load_state_dict, ref.state_dict())
    copy = _no_warnings(MultiHeadAttention.from_torch, ref)  # from_torch copies the layout
    assert copy.batch_first is False
    torch.testing.assert_close(copy(x)[0], ref(x, x, x)[0], **TOL)
    _no_warnings(MultiHeadAttention(E, H).load_state_dict, MultiHeadAttention(E, H).state_dict())  # attnkit keys


def test_layer_loading_a_torch_layer_without_stating_the_layout_warns():
    ref = nn.TransformerEncoderLayer(E, H, 32).eval()
    with pytest.warns(UserWarning, match="batch_first"):
        TransformerEncoderLayer(E, H, 32).load_state_dict(ref.state_dict())
    mine = TransformerEncoderLayer(E, H, 32, batch_first=False).eval()
    _no_warnings(mine.load_state_dict, ref.state_dict())
    x = torch.randn(T, B, E)
    torch.testing.assert_close(mine(x), ref(x), **TOL)


def test_appended_keys_refuse_rope_and_qk_norm():
    with pytest.raises(attnkit.AttnKitError, match="cannot be combined with rope or qk_norm"):
        MultiHeadAttention(E, H, add_bias_kv=True, rope=True)
    with pytest.raises(attnkit.AttnKitError, match="cannot be combined with rope or qk_norm"):
        MultiHeadAttention(E, H, add_zero_attn=True, qk_norm=True)


# -- long padded inputs (the tiled implementations) -----------------------------------------------

L = 300


def _padding(dtype):
    kpm = torch.zeros(B, L, dtype=torch.bool)
    kpm[1, -57:] = True
    return kpm if dtype == torch.bool else torch.zeros(B, L).masked_fill(kpm, float("-inf"))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_long_key_padding_mask_matches_torch(dtype):
    torch.manual_seed(2)
    ref = nn.MultiheadAttention(E, H, batch_first=True).eval()
    mine = MultiHeadAttention.from_torch(ref).eval()  # impl="auto"
    x = torch.randn(B, L, E)
    kpm = _padding(dtype)
    want = ref(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
    got = mine(x, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_long_encoder_layer_src_key_padding_mask_matches_torch(dtype):
    torch.manual_seed(3)
    ref = nn.TransformerEncoderLayer(E, H, 32, batch_first=True).eval()
    mine = TransformerEncoderLayer.from_torch(ref).eval()
    x = torch.randn(B, L, E)
    kpm = _padding(dtype)
    want, got = ref(x, src_key_padding_mask=kpm), mine(x, src_key_padding_mask=kpm)
    real = ~_padding(torch.bool)  # PyTorch's fast path may leave padded positions unspecified
    torch.testing.assert_close(got[real], want[real], **TOL)
