"""The demo's four steps are consistent with each other and with attention()."""

from __future__ import annotations

import torch

import attnkit
from attnkit.apps.demo import SENTENCE, compare_impls, embed_tokens, four_steps


def test_embeddings_equal_for_equal_words():
    tokens = SENTENCE.split()
    x = embed_tokens(tokens)
    assert x.shape == (len(tokens), 16)
    # "the" at positions 0 and 4 differ only by their position encoding
    assert torch.allclose(x[0] - x[4], embed_tokens(["the"] * 5)[0] - embed_tokens(["the"] * 5)[4])


def test_four_steps_recompose():
    steps = four_steps(embed_tokens(SENTENCE.split()))
    s, w, v, out = steps["scores"], steps["weights"], steps["v"], steps["out"]
    want_w = torch.softmax(s.masked_fill(~steps["mask"], float("-inf")), -1)
    torch.testing.assert_close(w, want_w)
    torch.testing.assert_close(out, w @ v)
    torch.testing.assert_close(out, attnkit.attention(steps["q"], steps["k"], v, attnkit.masks.causal()))


def test_compare_impls_covers_registry():
    steps = four_steps(embed_tokens(["a", "b", "c"]))
    rows = compare_impls(steps["q"], steps["k"], steps["v"], attnkit.masks.causal())
    assert [r[0] for r in rows] == attnkit.list_impls()
    for name, err, _ in rows:
        if err != "-" and attnkit.get_impl(name).exact:
            assert float(err) < 1e-5
