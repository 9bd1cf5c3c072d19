"""Every translation model: cached decoding equals recomputation, beam 1 equals greedy, a saved and
loaded checkpoint gives identical outputs, cross-attention weights are distributions."""

from __future__ import annotations

import pytest
import torch

from attnkit.apps.trainer import load_weights, save_weights
from attnkit.apps.translation.decoding import beam_search, greedy
from attnkit.apps.translation.metrics import alignment_error, gold_alignment
from attnkit.apps.translation.models import MODELS, ModelConfig, build_model
from attnkit.apps.translation.tokenizer import EOS, PAD
from attnkit.errors import AttnKitError

V = 40


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, vocab=V, d_model=32, emb_dim=16, layers=2, heads=4, ff=64, dropout=0.0)
    return build_model(cfg).eval()


def _src(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (3, 7), generator=g)
    src[0, 5:] = PAD  # ragged batch
    src[0, 4] = src[1, 6] = src[2, 6] = EOS
    return src, src != PAD


@pytest.mark.parametrize("kind", MODELS)
def test_cached_decoding_equals_recomputation(kind):
    model, (src, mask) = _model(kind), _src()
    fast = greedy(model, src, mask, 9)
    slow = greedy(model, src, mask, 9, use_cache=False)
    assert torch.equal(fast, slow) and fast.shape[1] >= 2
    # the step logits equal the teacher-forced ones
    state = model.start(src, mask)
    tgt_in = torch.cat((torch.ones(3, 1, dtype=torch.long), fast[:, :3].clamp(min=4)), dim=1)
    steps = torch.stack([model.step(state, tgt_in[:, t]) for t in range(tgt_in.shape[1])], dim=1)
    torch.testing.assert_close(steps, model(src, mask, tgt_in), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_beam_one_is_greedy_and_beams_are_well_formed(kind):
    model, (src, mask) = _model(kind), _src()
    g = greedy(model, src, mask, 9)
    b1 = beam_search(model, src, mask, 9, beam=1)
    assert torch.equal(b1[:, : g.shape[1]], g) and (b1[:, g.shape[1]:] == PAD).all()

    b4 = beam_search(model, src, mask, 9, beam=4, length_penalty=0.6)
    assert b4.shape[0] == 3 and b4.shape[1] <= 9
    for row in b4.tolist():  # ends at </s> (then <pad>) or runs to max_len; never emits <pad> or <s> before
        end = row.index(EOS) if EOS in row else len(row) - 1
        assert all(t not in (PAD, 1) for t in row[: end + 1]) and all(t == PAD for t in row[end + 1:])


@pytest.mark.parametrize("kind", MODELS)
def test_checkpoint_roundtrip_gives_identical_outputs(kind, tmp_path):
    model, (src, mask) = _model(kind, seed=3), _src()
    save_weights(tmp_path / "m.safetensors", model.state_dict())
    other = _model(kind, seed=4)
    tgt_in = torch.randint(4, V, (3, 5))
    assert not torch.equal(other(src, mask, tgt_in), model(src, mask, tgt_in))
    other.load_state_dict(load_weights(tmp_path / "m.safetensors"))
    assert torch.equal(other(src, mask, tgt_in), model(src, mask, tgt_in))
    assert torch.equal(greedy(other, src, mask, 8), greedy(model, src, mask, 8))


@pytest.mark.parametrize("kind", MODELS)
def test_alignments_are_distributions_over_real_source_tokens(kind):
    model, (src, mask) = _model(kind), _src()
    w = model.alignments(src, mask, torch.randint(4, V, (3, 5)))
    if kind == "rnn":
        assert w is None
        return
    transformer = kind.startswith("transformer")
    assert w.shape == (2 if transformer else 1, 4 if transformer else 1, 3, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert (w[:, :, 0, :, 5:] == 0).all()  # padding gets no weight


def test_decoding_refuses_bad_sizes():
    model, (src, mask) = _model("rnn"), _src()
    with pytest.raises(AttnKitError, match="beam must be >= 1"):
        beam_search(model, src, mask, 5, beam=0)
    with pytest.raises(AttnKitError, match="max_len must be >= 1"):
        greedy(model, src, mask, 0)
    with pytest.raises(AttnKitError, match="model 'gpt' is not known"):
        ModelConfig(kind="gpt", vocab=V)


def test_alignment_error_counts_argmax_outside_the_component():
    from attnkit.apps.translation.data import Pair

    # source "a b c" (tokens at chars 0, 2, 4), target "x y": x <- {a, b}, y <- {c}
    pair = Pair("a b c", "x y", "0", (("uh", (0, 3), (0, 1)), ("ur", (3, 5), (1, 3))))
    gold = gold_alignment(pair, [(0, 1), (2, 3), (4, 5), (5, 5)], [(0, 1), (2, 3), (3, 3)])
    assert gold == [{0, 1}, {2}, None]
    right = torch.tensor([[0.1, 0.8, 0.1, 0.0], [0.0, 0.1, 0.9, 0.0], [0.0, 0.0, 0.0, 1.0]])
    wrong = torch.tensor([[0.1, 0.1, 0.8, 0.0], [0.0, 0.1, 0.9, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert alignment_error(right, gold) == (0, 2)
    assert alignment_error(wrong, gold) == (1, 2)
