"""Bad input raises the documented error type with a message naming what was got and expected."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, DTypeError, ShapeError, UnknownNameError, UnsupportedError


def qkv(b=2, h=4, hkv=2, t=5, s=7, d=8, dv=6, dtype=torch.float32):
    return (torch.randn(b, h, t, d, dtype=dtype), torch.randn(b, hkv, s, d, dtype=dtype),
            torch.randn(b, hkv, s, dv, dtype=dtype))


BAD = [
    # (description, kwargs builder, error type, message regex)
    ("rank", lambda q, k, v: dict(q=q[0]), ShapeError,
     r"q must be a 4-D tensor \(B, H, T, D\); got shape \(4, 5, 8\)"),
    ("not a tensor", lambda q, k, v: dict(k=[1, 2]), DTypeError, "k must be a torch.Tensor"),
    ("int dtype", lambda q, k, v: dict(v=v.long()), DTypeError, "v must be a floating tensor.*got torch.int64"),
    ("dtype mix", lambda q, k, v: dict(k=k.double()), DTypeError,
     "share one dtype; got q torch.float32, k torch.float64"),
    ("batch", lambda q, k, v: dict(k=k[:1], v=v[:1]), ShapeError,
     r"batch sizes differ: q \(2, 4, 5, 8\), k \(1, 2, 7, 8\)"),
    ("head dim", lambda q, k, v: dict(k=k[..., :4]), ShapeError, "head dim of q and k differ.*D=8.*D=4"),
    ("kv mismatch", lambda q, k, v: dict(v=v[:, :, :3]), ShapeError,
     r"k \(2, 2, 7, 8\) and v \(2, 2, 3, 6\) must agree"),
    ("heads divide", lambda q, k, v: dict(k=torch.randn(2, 3, 7, 8), v=torch.randn(2, 3, 7, 6)), ShapeError,
     "query heads H=4 must be a multiple of key/value heads Hkv=3"),
    ("mask shape", lambda q, k, v: dict(mask=torch.ones(5, 6, dtype=torch.bool)), ShapeError,
     r"mask tensor has shape \(1, 1, 5, 6\); expected a shape broadcastable to \(B, H, T, S\) = \(2, 4, 5, 7\)"),
    ("mask dtype", lambda q, k, v: dict(mask=torch.ones(5, 7)), DTypeError, "mask tensor must have dtype torch.bool"),
    ("padding batch", lambda q, k, v: dict(mask=masks.padding([1, 2, 3])), ShapeError, "batch size 3; expected 1 or 2"),
    ("bias shape", lambda q, k, v: dict(bias=torch.zeros(3, 5, 7)), ShapeError,
     r"bias has shape \(3, 5, 7\); expected a shape broadcastable to \(B, H, T, S\) = \(2, 4, 5, 7\)"),
    ("bias dtype", lambda q, k, v: dict(bias=torch.zeros(5, 7, dtype=torch.bool)), DTypeError,
     "bias must be a floating"),
    ("score name", lambda q, k, v: dict(score="scaled"), UnknownNameError, "unknown score 'scaled'; valid score names"),
    ("weight name", lambda q, k, v: dict(weight="max"), UnknownNameError, "unknown weight 'max'; valid weight names"),
    ("impl name", lambda q, k, v: dict(impl="flash9"), UnknownNameError,
     "unknown impl 'flash9'; valid impl names: auto"),
    ("dropout", lambda q, k, v: dict(dropout_p=1.0), AttnKitError, r"dropout_p must be a float in \[0, 1\); got 1.0"),
    ("scale", lambda q, k, v: dict(scale=float("nan")), AttnKitError, "scale must be None or a finite float"),
    ("options", lambda q, k, v: dict(options=["upcast"]), AttnKitError, "options must be a mapping"),
    ("unknown option", lambda q, k, v: dict(impl="reference", options={"block": 3}), UnsupportedError,
     r"unknown options \['block'\] \(accepts \['reorder_ops', 'upcast'\]\)"),
    ("pinned impl refuses", lambda q, k, v: dict(impl="sdpa", weight="sparsemax"), UnsupportedError,
     "(?s)impl 'sdpa' cannot run this call:.*weight 'sparsemax' not in \\['softmax'\\]"),
    ("pinned impl lse", lambda q, k, v: dict(impl="sdpa", return_lse=True), UnsupportedError,
     "cannot return the log-sum-exp"),
]


@pytest.mark.parametrize("desc,change,err,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, change, err, msg):
    q, k, v = qkv()
    kwargs = dict(q=q, k=k, v=v)
    kwargs.update(change(q, k, v))
    with pytest.raises(err, match=msg):
        attnkit.attention(**kwargs)


def test_all_errors_are_value_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError):
        attnkit.attention(q[0], k, v)
    with pytest.raises(KeyError):  # unknown names are also KeyErrors, as for a registry lookup
        attnkit.get_impl("nope")


def test_device_mix_is_reported():
    q, k, v = qkv()
    meta = torch.empty(k.shape, device="meta")
    with pytest.raises(DTypeError, match="one device"):
        attnkit.attention(q, meta, v)


def test_pinned_impl_never_falls_back():
    q, k, v = qkv()
    q.requires_grad_()
    with pytest.raises(UnsupportedError, match="sdpa"):
        attnkit.attention(q, k, v, impl="sdpa", score_mods=(attnkit.scores.softcap(3.0),))
