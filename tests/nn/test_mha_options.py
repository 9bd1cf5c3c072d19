"""``MultiHeadAttention(impl_options=...)``: the implementation's options on every call, a call's own
options replacing them."""

from __future__ import annotations

import pytest
import torch

from attnkit.nn import MultiHeadAttention


def test_impl_options_reach_the_implementation():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 16)
    small = MultiHeadAttention(16, 2, impl="lsh", impl_options={"bucket_size": 4, "n_hashes": 1})
    whole = MultiHeadAttention(16, 2, impl="lsh", impl_options={"bucket_size": 32, "n_hashes": 1})
    whole.load_state_dict(small.state_dict())
    exact = MultiHeadAttention(16, 2, impl="reference")
    exact.load_state_dict(small.state_dict())
    ref = exact(x, need_weights=False)[0]
    a, b = small(x, need_weights=False)[0], whole(x, need_weights=False)[0]
    assert (a - ref).abs().max() > 1e-3  # chunks of 4 keys: an approximation
    torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)  # one chunk holds every key: exact
    q = small.q_proj(x)
    k, v = small.k_proj(x), small.v_proj(x)
    override = small.attend(q, k, v, options={"bucket_size": 32, "n_hashes": 1})[0]
    torch.testing.assert_close(small.o_proj(override), ref, atol=1e-5, rtol=1e-5)


def test_bad_impl_options_are_refused_by_name():
    mha = MultiHeadAttention(16, 2, impl="lsh", impl_options={"bucket_sise": 4})
    with pytest.raises(ValueError, match="bucket_sise"):
        mha(torch.randn(1, 8, 16), need_weights=False)
