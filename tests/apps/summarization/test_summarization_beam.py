"""Beam search for the summarizers: beam 1 is greedy, hypotheses come best first with the scores
that recomputation (no KV cache) gives, greedy's rules hold, and the pointer copies a word outside
the vocabulary under beam search."""

from __future__ import annotations

import pytest
import torch
from summarization_helpers import V, copy_task, tiny, trained_copier

from attnkit.apps.summarization.models import BOS, EOS, MODELS, PAD, UNK
from attnkit.apps.summarization.task import beam_search, decode, greedy, results_name
from attnkit.errors import AttnKitError

torch.set_num_threads(1)


def _batch(b: int = 4, s: int = 8, seed: int = 0) -> dict:
    """Random sources; each has one word outside the vocabulary (id V), the first a second one (V + 1)."""
    g = torch.Generator().manual_seed(seed)
    ext = torch.randint(4, V, (b, s), generator=g)
    ext[:, 1] = V
    ext[0, 4] = V + 1
    ext[-1, -2:] = PAD
    ext[:-1, -1] = EOS
    ext[-1, -3] = EOS
    src = ext.masked_fill(ext >= V, UNK)
    return {"src": src, "src_ext": ext, "n_ext": 2}


@pytest.mark.parametrize("kind", MODELS)
def test_beam_one_is_greedy(kind):
    model = tiny(kind).eval()
    batch = _batch()
    for max_len in (1, 6, 12):
        g, _ = greedy(model, batch, max_len)
        ids, scores = beam_search(model, batch, max_len, beam=1)
        assert ids.shape[:2] == (4, 1) and scores.shape == (4, 1)
        assert torch.equal(ids[:, 0], g), (kind, max_len)
        assert torch.equal(decode(model, batch, max_len, beam=1), g)


def _recomputed(model, batch, ids: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities ``(B*K,)`` of ``ids (B*K, T)`` by full teacher-forced forwards (no cache),
    renormalized without ``<pad>`` and ``<s>`` as decoding does."""
    n = ids.shape[0] // batch["src"].shape[0]
    src = batch["src"].repeat_interleave(n, 0)
    ext = batch["src_ext"].repeat_interleave(n, 0)
    tgt_in = torch.cat((torch.full((len(ids), 1), BOS), ids[:, :-1]), 1)
    with torch.no_grad():
        logp = model(src, src != PAD, tgt_in, ext, batch["n_ext"] if model.copies else 0).float()  # (N, T, X)
    logp[..., [PAD, BOS]] = float("-inf")
    logp = torch.log_softmax(logp, -1)
    picked = logp.gather(2, ids.unsqueeze(2))[..., 0]  # (N, T)
    is_eos = (ids == EOS).long()
    live = (is_eos.cumsum(1) - is_eos == 0) & (ids != PAD)  # up to and with the first </s>
    return torch.where(live, picked, 0.0).sum(1), live.sum(1)


@pytest.mark.parametrize("kind", MODELS)
def test_beams_are_sorted_and_cached_scores_equal_recomputation(kind):
    model = tiny(kind).eval()
    batch = _batch()
    k = 4
    ids, scores = beam_search(model, batch, 10, beam=k, length_penalty=0.0)  # scores: plain log p
    assert ids.shape[:2] == (4, k) and scores.shape == (4, k)
    assert torch.isfinite(scores).all()
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # best first
    # the hypotheses of one source differ
    for row in ids:
        assert len({tuple(h.tolist()) for h in row}) == k
    total, length = _recomputed(model, batch, ids.reshape(4 * k, -1))
    torch.testing.assert_close(total.reshape(4, k), scores, atol=1e-4, rtol=1e-5)
    # with a length penalty the same scores are divided by length ** alpha, still best first
    ids2, scores2 = beam_search(model, batch, 10, beam=k, length_penalty=1.0)
    total2, length2 = _recomputed(model, batch, ids2.reshape(4 * k, -1))
    torch.testing.assert_close((total2 / length2).reshape(4, k), scores2, atol=1e-4, rtol=1e-5)
    assert torch.all(scores2[:, :-1] >= scores2[:, 1:])
    # beam search finds a summary at least as likely as greedy's (with no length penalty) here
    g, _ = greedy(model, batch, 10)
    g_total, _ = _recomputed(model, batch, g)
    assert torch.all(scores[:, 0] >= g_total - 1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_beam_keeps_greedys_rules(kind):
    model = tiny(kind, seed=1).eval()
    batch = _batch(seed=3)
    ids, _ = beam_search(model, batch, 20, beam=3, no_repeat=3)
    for hyp in ids.reshape(-1, ids.shape[-1]).tolist():
        assert hyp[0] != EOS  # never an empty summary
        if EOS in hyp:  # <pad> only after </s>
            assert set(hyp[hyp.index(EOS) + 1 :]) <= {PAD}
            hyp = hyp[: hyp.index(EOS)]
        assert not {PAD, BOS, UNK} & set(hyp)
        grams = [tuple(hyp[i : i + 3]) for i in range(len(hyp) - 2)]
        assert len(grams) == len(set(grams))
        if not model.copies:
            assert max(hyp) < V


def test_pointer_copies_an_unknown_word_under_beam():
    model = trained_copier()
    test = copy_task(48, 10_000)
    ids, scores = beam_search(model, test, 3, beam=4)
    assert (ids[:, 0, 0] == V).float().mean() >= 0.9  # the best beam copies the word the vocabulary lacks
    assert (ids[:, 0, 1] == EOS).float().mean() >= 0.9
    assert torch.all(scores[:, 0] > scores[:, 1])


def test_bad_beam_options():
    model = tiny("transformer").eval()
    with pytest.raises(AttnKitError, match="beam must be >= 1; got 0"):
        beam_search(model, _batch(), 5, beam=0)
    with pytest.raises(AttnKitError, match="length_penalty must be a number >= 0; got -1"):
        beam_search(model, _batch(), 5, beam=2, length_penalty=-1.0)
    assert results_name() == "results.json" and results_name(4) == "results-beam4.json"
    assert results_name(4, 0.6) == "results-beam4-lp0.6.json"
