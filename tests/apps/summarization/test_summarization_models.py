"""Summarization models: the pointer-generator's distribution is a distribution, it copies words
the vocabulary cannot produce, cached decoding equals teacher forcing, and the vocabulary's
temporary ids round-trip."""

from __future__ import annotations

import pytest
import torch
from summarization_helpers import V, copy_task, tiny, trained_copier

from attnkit.apps.summarization.models import (
    BOS,
    EOS,
    MODELS,
    PAD,
    UNK,
    SummConfig,
    TransformerSummarizer,
    WordVocab,
)
from attnkit.apps.summarization.task import _blocked, collate, encode, greedy
from attnkit.errors import AttnKitError

torch.set_num_threads(1)


def _batch(b: int = 3, s: int = 7, n_ext: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (b, s), generator=g)
    ext = src.clone()
    ext[:, 2] = V  # every source's first unknown word
    ext[0, 5] = V + 1  # a second one in the first source
    src = src.masked_fill(ext >= V, UNK)
    src[-1, -2:] = PAD
    ext[-1, -2:] = PAD
    tgt = torch.tensor([[BOS, V, 5, V + 1], [BOS, 6, V, EOS], [BOS, V, EOS, PAD]])[:b]
    return src, ext, tgt, n_ext


@pytest.mark.parametrize("kind", MODELS)
def test_output_is_a_distribution_and_cached_steps_match(kind):
    model = tiny(kind).eval()
    src, ext, tgt, n_ext = _batch()
    with torch.no_grad():
        logp = model(src, src != PAD, tgt, ext, n_ext)  # (B, T, X)
        assert logp.shape == (3, 4, V + n_ext if model.copies else V)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 4), atol=1e-5, rtol=0)
        state = model.start(src, src != PAD, ext, n_ext)
        steps = torch.stack([model.step(state, tgt[:, t]) for t in range(tgt.shape[1])], 1)
    torch.testing.assert_close(steps, logp, atol=1e-5, rtol=1e-5)


def test_copy_probability_is_p_gen_weighted_attention():
    model = tiny("pointer").eval()
    src, ext, tgt, n_ext = _batch()
    with torch.no_grad():
        p = model(src, src != PAD, tgt, ext, n_ext).exp()  # (B, T, V + 2)
    w, p_gen = model.last_cross["weights"], model.last_cross["p_gen"]  # (B, T, S), (B, T)
    assert w.shape == (3, 4, 7) and p_gen.shape == (3, 4)
    assert torch.all((p_gen > 0) & (p_gen < 1))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4), atol=1e-5, rtol=0)
    assert torch.all(w[-1, :, -2:] == 0)  # padded source words get no attention
    # an unknown word's probability is all copy: (1 - p_gen) times the attention on its positions
    expect = (1 - p_gen) * (w * (ext == V).unsqueeze(1)).sum(-1)
    torch.testing.assert_close(p[..., V], expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p[0, :, V + 1], (1 - p_gen[0]) * w[0, :, 5], atol=1e-6, rtol=1e-5)
    assert torch.all(p[1:, :, V + 1] < 1e-30)  # not in those sources: nothing to copy


def test_pointer_needs_extended_ids():
    model = tiny("pointer")
    src, _, tgt, _ = _batch()
    with pytest.raises(AttnKitError, match="src_ext"):
        model(src, src != PAD, tgt)


def test_pointer_learns_to_copy_a_word_outside_the_vocabulary():
    """The vocabulary cannot produce id V (it has V entries): only the copy distribution can."""
    model = trained_copier()
    test = copy_task(64, 10_000)
    ids, p_gen = greedy(model, test, 3)
    assert (ids[:, 0] == V).float().mean() >= 0.9
    assert p_gen[:, 0].mean() < 0.5  # it copies: the generator's share is small for that word
    # the same model without its copy mechanism cannot emit the word at all
    plain = tiny("transformer").eval()
    ids_plain, gates = greedy(plain, test, 3)
    assert gates is None and bool((ids_plain < V).all())


def test_vocab_temporary_ids_round_trip(tmp_path):
    vocab = WordVocab.build(["the cat sat on the mat", "the cat ran", "a mat"], size=8, min_count=1)
    assert vocab.itos[:4] == ["<pad>", "<s>", "</s>", "<unk>"] and len(vocab) == 8
    ids, ext, oov = vocab.encode_source(["the", "zebra", "cat", "zebra", "okapi"])
    n = len(vocab)
    assert oov == ["zebra", "okapi"] and ext[1] == ext[3] == n and ext[4] == n + 1
    assert ids[1] == ids[4] == UNK and ids[0] == ext[0]
    assert vocab.encode_target(["zebra", "gnu", "the"], oov) == [n, UNK, vocab.stoi["the"]]
    assert vocab.decode([ext[0], n + 1, n, EOS, n], oov) == ["the", "okapi", "zebra"]
    assert WordVocab.load(vocab.save(tmp_path / "vocab.json")).itos == vocab.itos
    with pytest.raises(AttnKitError, match="vocab.json"):
        WordVocab.load(tmp_path / "missing.json")
    with pytest.raises(AttnKitError, match="must start with"):
        WordVocab(["a", "b", "c", "d"])


def test_encode_and_collate():
    vocab = WordVocab.build(["alpha beta gamma delta"], size=20, min_count=1)
    ex = encode(vocab, "Alpha beta Omega, gamma omega delta epsilon", "omega and beta", src_len=6, tgt_len=5)
    n = len(vocab)
    assert ex.oov == ["omega"] and ex.src_ext[2] == ex.src_ext[4] == n and ex.src[-1] == EOS and len(ex.src) == 7
    assert ex.tgt == [BOS, n, UNK, vocab.stoi["beta"], EOS]
    batch = collate([ex, encode(vocab, "beta", "beta", 6, 5)])
    assert batch["src"].shape == (2, 7) and batch["n_ext"] == 1 and batch["tgt"].shape == (2, 5)


def test_no_repeated_trigrams():
    assert _blocked([5, 6, 7, 5, 6]) == {7}
    assert _blocked([5, 6]) == set()
    model = tiny("transformer").eval()
    src, ext, _, _ = _batch()
    ids, _ = greedy(model, {"src": src, "src_ext": ext, "n_ext": 0}, 20)
    for row in ids.tolist():
        row = [t for t in row if t not in (PAD, EOS)]
        grams = [tuple(row[i : i + 3]) for i in range(len(row) - 2)]
        assert len(grams) == len(set(grams))
        assert not {PAD, BOS, UNK} & set(row)


def test_unknown_model_kind():
    with pytest.raises(AttnKitError, match="model 'bert' is not known; expected one of pointer, transformer, rnn"):
        SummConfig("bert", vocab=10)
    assert isinstance(tiny("pointer"), TransformerSummarizer)
