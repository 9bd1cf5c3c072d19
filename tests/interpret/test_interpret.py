"""attnkit.interpret: capture, rollout, flow, head statistics, PNG and HTML views."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attnkit
from attnkit.errors import AttnKitError, ShapeError
from attnkit.interpret import (
    attention_flow,
    attention_rollout,
    capture_attention,
    head_grid,
    head_stats,
    lines_view,
    matrix_view,
    max_flow,
    model_overview,
    render_html,
    residual_attention,
)


def random_attention(layers: int, heads: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, heads, t, t, generator=g) * 2, -1)  # (L, H, T, T)


# --------------------------------------------------------------------------- capture


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, x, impl):  # x (B, H, T, 8)
        x = attnkit.attention(self.first(x), x, x, attnkit.masks.causal(), impl=impl)
        return attnkit.attention(self.second(x), x, x, impl=impl)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_capture_matches_reference_weights(impl):
    model = TwoLayer()
    x = torch.randn(2, 3, 5, 8)
    with capture_attention() as cap:
        model(x, impl)
    assert len(cap) == 2 and {r.impl for r in cap.records} == {impl}
    _, w_ref = attnkit.attention(model.first(x), x, x, attnkit.masks.causal(), impl="reference", return_weights=True)
    assert torch.allclose(cap.weights[0], w_ref.detach(), atol=1e-6)
    assert cap.weights[0][..., 0, 1:].abs().max() == 0  # causal: the first query sees only key 0
    assert cap.stack().shape == (2, 2, 3, 5, 5)


@pytest.mark.parametrize("impl,options", [("blockwise", None), ("block_sparse", None),
                                          ("lsh", {"bucket_size": 4}), ("linear", None)])
def test_capture_from_any_implementation(impl, options):
    if impl not in attnkit.list_impls():
        pytest.skip(f"impl {impl!r} not registered")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    plain = attnkit.attention(q, k, v, impl=impl, options=options)
    with capture_attention() as cap:
        out = attnkit.attention(q, k, v, impl=impl, options=options)
    assert torch.allclose(out, plain, atol=1e-6)  # capturing does not change the output
    (rec,) = cap.records
    assert rec.impl == impl and rec.weights.shape == (1, 2, 16, 16)
    assert torch.allclose(rec.weights.sum(-1), torch.ones(1, 2, 16), atol=1e-5)
    if attnkit.get_impl(impl).exact:
        _, w_ref = attnkit.attention(q, k, v, impl="reference", return_weights=True)
        assert torch.allclose(rec.weights, w_ref, atol=1e-5)


def test_capture_names_modules_and_filters():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.ModuleList([nn.Identity(), _Attn()])

        def forward(self, x):
            return self.inner[1](self.inner[0](x))

    class _Attn(nn.Module):
        def forward(self, x):
            return attnkit.attention(x, x, x)

    model = Outer()
    x = torch.randn(1, 2, 4, 8)
    with capture_attention(model) as cap:
        y = model(x)
    assert y.shape == x.shape  # hooks leave outputs alone
    assert [r.module for r in cap.records] == ["inner.1"]
    with capture_attention(where=lambda call, impl: call.lq > 4) as none:
        model(x)
    assert len(none) == 0
    with pytest.raises(AttnKitError, match="no attention call was captured"):
        none.stack()
    # hooks are removed afterwards
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_capture_shape_mismatch_is_clear():
    with capture_attention() as cap:
        attnkit.attention(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4))
        attnkit.attention(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4))
    with pytest.raises(ShapeError, match="differ in shape"):
        cap.stack()


# --------------------------------------------------------------------------- rollout and flow


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 4), heads=st.integers(1, 3), t=st.integers(1, 7), seed=st.integers(0, 99),
       fusion=st.sampled_from(["mean", "max", "min"]))
def test_rollout_rows_sum_to_one(layers, heads, t, seed, fusion):
    r = attention_rollout(random_attention(layers, heads, t, seed), head_fusion=fusion)
    assert r.shape == (t, t)
    assert torch.allclose(r.sum(-1), torch.ones(t, dtype=r.dtype), atol=1e-9)
    assert (r >= 0).all()


def test_rollout_hand_made_two_layers():
    a1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    a2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # Â1 = 0.5 a1 + 0.5 I = [[1, 0], [.25, .75]];  Â2 = [[.5, .5], [.5, .5]];  R = Â2 Â1
    expected = torch.tensor([[0.625, 0.375], [0.625, 0.375]], dtype=torch.float64)
    got = attention_rollout(torch.stack([a1, a2]).unsqueeze(1))  # (L=2, H=1, T, T)
    assert torch.allclose(got, expected, atol=1e-12)
    # without the residual term it is the plain product a2 @ a1
    plain = attention_rollout(torch.stack([a1, a2]), residual=False)
    assert torch.allclose(plain, (a2 @ a1).double(), atol=1e-12)


def test_max_flow_textbook_graph():
    # the classic 6-node network with max flow 23
    edges = {(0, 1): 16, (0, 2): 13, (1, 3): 12, (2, 1): 4, (2, 4): 14, (3, 2): 9, (3, 5): 20, (4, 3): 7, (4, 5): 4}
    cap = [{} for _ in range(6)]
    for (u, v), c in edges.items():
        cap[u][v] = float(c)
    assert max_flow(cap, 0, 5) == pytest.approx(23.0)
    assert max_flow(cap, 5, 0) == 0.0


def test_flow_one_and_two_layers():
    att = random_attention(2, 2, 4, seed=3)
    one = attention_flow(att[:1])
    assert torch.allclose(one, residual_attention(att[:1])[0], atol=1e-9)  # a single edge per pair
    a1, a2 = residual_attention(att)
    # two layers: paths j -> k -> i are edge-disjoint, so the flow is sum_k min(Â2[i,k], Â1[k,j])
    expected = torch.minimum(a2.unsqueeze(2), a1.unsqueeze(0)).sum(1)  # (i, k, j) summed over k
    assert torch.allclose(attention_flow(att), expected, atol=1e-9)


def test_rollout_bad_shape():
    with pytest.raises(ShapeError, match=r"\(L, H, T, T\)"):
        attention_rollout(torch.rand(2, 3, 4, 5))
    with pytest.raises(AttnKitError, match="head_fusion"):
        attention_rollout(random_attention(1, 2, 3), head_fusion="median")


# --------------------------------------------------------------------------- statistics


def test_head_stats_known_patterns():
    t = 4
    uniform = torch.full((t, t), 1 / t)
    identity = torch.eye(t)
    to_cls = torch.zeros(t, t)
    to_cls[:, 0] = 1
    att = torch.stack([uniform, identity, to_cls]).unsqueeze(0)  # (L=1, H=3, T, T)
    s = head_stats(att, ["[CLS]", "a", "b", "[SEP]"])
    assert s.entropy[0].tolist() == pytest.approx([math.log(t), 0.0, 0.0], abs=1e-9)
    assert s.self[0].tolist() == pytest.approx([0.25, 1.0, 0.25])
    assert s.cls[0].tolist() == pytest.approx([0.25, 0.25, 1.0])
    assert s.sep[0].tolist() == pytest.approx([0.25, 0.25, 0.0])
    assert s.distance[0].tolist() == pytest.approx([1.25, 0.0, 1.5])  # mean |i - j|; to [CLS]: mean i
    assert "| 0 | 1 |" in s.table()
    assert "sharpest head (lowest entropy): layer 0 head 1" in s.summary()
    with pytest.raises(ShapeError, match="tokens has 2 entries"):
        head_stats(att, ["a", "b"])


# --------------------------------------------------------------------------- views

TOKENS = ["[CLS]", "the", "<b>", "a&b", "\"q\"", "[SEP]"]


def _assert_png(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 50 and img.shape[1] > 50


def test_png_views_render(tmp_path):
    att = random_attention(2, 3, len(TOKENS))
    _assert_png(head_grid(att[0], TOKENS, tmp_path / "grid.png", title="layer 0"))
    _assert_png(model_overview(att, tmp_path / "overview.png"))
    _assert_png(lines_view(att[1], TOKENS, tmp_path / "lines.png"))
    _assert_png(matrix_view(attention_rollout(att), TOKENS, tmp_path / "sub" / "rollout.png"))
    with pytest.raises(ShapeError, match="tokens has 2 entries"):
        lines_view(att[1], ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ShapeError, match="4-D"):
        model_overview(att[0], tmp_path / "bad.png")


def html_payload(text: str) -> dict:
    payload = re.search(r'<script type="application/json" id="attn-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(payload.replace("<\\/", "</"))


def decode_weights(entry: dict) -> torch.Tensor:
    """What the page's ``decode`` does: bytes -> ``scale * (byte / 255) ** 2``."""
    raw = torch.frombuffer(bytearray(base64.b64decode(entry["data"])), dtype=torch.uint8)
    return (entry["scale"] * (raw.double() / 255) ** 2).view(entry["shape"])


def test_html_is_self_contained_and_has_every_token():
    import html as html_lib

    att = random_attention(2, 3, len(TOKENS))
    text = render_html(att, TOKENS, rollout=attention_rollout(att), flow=attention_flow(att),
                       stats=head_stats(att, TOKENS), title="demo <report>")
    assert not re.search(r"https?:|src=[\"']|<link|@import", text, re.I)
    for tok in TOKENS:
        assert f"<span>{html_lib.escape(tok)}</span>" in text
    data = html_payload(text)
    assert data["tokens"] == TOKENS
    weights = decode_weights(data["attentions"])
    assert weights.shape == att.shape
    # one byte on a square-root scale: within 0.004 everywhere, within 0.0004 below 0.01
    assert (weights - att.double()).abs().max() <= 1 / 255 + 1e-9
    small = att < 0.01
    assert (weights - att.double())[small].abs().max() <= 0.0004
    assert torch.allclose(decode_weights(data["rollout"]), attention_rollout(att).double(), atol=1 / 255)
    assert "<b>" not in text.split("<body>")[1].split("<script")[0]  # tokens are escaped
    with pytest.raises(ShapeError, match="tokens has 1 entries"):
        render_html(att, ["x"])
