"""The transformer with its encoder on sparse (window + global token) and LSH attention: the same
weights run three ways, a sparse model trained that way, and ``eval --encoder``."""

from __future__ import annotations

import json

import pytest
import torch
from translation_helpers import assert_beats_baselines

from attnkit.apps.translation.models import ModelConfig, build_model, with_encoder_attention
from attnkit.cli import main


def _batch(vocab: int, lengths=(13, 9, 4)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = max(lengths)
    src = torch.randint(4, vocab, (len(lengths), s), generator=g)
    mask = torch.arange(s)[None] < torch.tensor(lengths)[:, None]
    src[~mask] = 0
    tgt = torch.randint(4, vocab, (len(lengths), 7), generator=g)
    return src, mask, tgt


def test_sparse_encoder_with_a_window_wider_than_the_source_is_exact():
    torch.manual_seed(0)
    exact = build_model(ModelConfig("transformer", vocab=50, d_model=32, layers=2, heads=4, ff=64, dropout=0.0)).eval()
    src, mask, tgt = _batch(50)
    wide = with_encoder_attention(exact, "transformer-sparse", window=20).eval()
    narrow = with_encoder_attention(exact, "transformer-sparse", window=2).eval()
    with torch.no_grad():
        ref, out_wide, out_narrow = exact(src, mask, tgt), wide(src, mask, tgt), narrow(src, mask, tgt)
    torch.testing.assert_close(out_wide, ref, atol=1e-5, rtol=1e-5)
    assert (out_narrow - ref).abs().max() > 1e-3  # a narrow window changes what the encoder sees


def test_lsh_encoder_runs_forward_and_backward_on_the_same_weights():
    torch.manual_seed(0)
    exact = build_model(ModelConfig("transformer", vocab=50, d_model=32, layers=2, heads=4, ff=64, dropout=0.0))
    lsh = with_encoder_attention(exact, "transformer-lsh", bucket_size=4, n_hashes=2)
    assert lsh.encoder.layers[0].self_attn.impl == "lsh"
    assert lsh.decoder.layers[0].self_attn.impl == "auto"  # the decoder stays exact
    src, mask, tgt = _batch(50)
    out = lsh(src, mask, tgt)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in lsh.encoder.parameters())


def test_lsh_encoder_trains_with_attention_dropout():
    """The full preset's dropout (0.1) reaches the encoder's LSH attention, which now supports it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("transformer-lsh", vocab=50, d_model=32, layers=2, heads=4, ff=64, dropout=0.1,
                                    bucket_size=4, n_hashes=2)).train()
    assert model.encoder.layers[0].self_attn.dropout == 0.1
    src, mask, tgt = _batch(50)
    a, b = model(src, mask, tgt), model(src, mask, tgt)
    assert not torch.equal(a, b)  # dropout draws differ in training
    a.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(src, mask, tgt), model(src, mask, tgt))


def test_encoder_kind_is_checked():
    exact = build_model(ModelConfig("transformer", vocab=20, d_model=16, layers=1, heads=2, ff=32))
    with pytest.raises(ValueError, match="expected one of transformer, transformer-sparse, transformer-lsh"):
        with_encoder_attention(exact, "transformer-dense")


@pytest.fixture(scope="module")
def sparse_run(attnkit_cache, tmp_path_factory):
    from attnkit.apps.translation import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("sparse") / "run"
    try:
        _, results = train(model="transformer-sparse", quick=True, out=path, progress=False, max_steps=400,
                           budget_minutes=5, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return path, results


def test_quick_sparse_transformer_learns_numbers(sparse_run):
    _, results = sparse_run
    assert results["model"] == "transformer-sparse"
    assert_beats_baselines(results, min_exact=0.3)


def test_eval_runs_the_trained_weights_with_an_lsh_encoder(sparse_run, capsys):
    path, results = sparse_run
    assert main(["eval", "translation", str(path), "--encoder", "lsh"]) == 0
    other = json.loads((path / "results-encoder-lsh.json").read_text())
    assert other["model"] == "transformer-lsh" and other["trained_as"] == "transformer-sparse"
    assert other["test"]["n"] == results["test"]["n"]
    assert json.loads((path / "results.json").read_text())["model"] == "transformer-sparse"  # untouched


def test_eval_encoder_needs_a_transformer_run(tmp_path, capsys):
    from attnkit.apps.translation import train

    path = tmp_path / "rnn"
    train(model="rnn", quick=True, out=path, progress=False, max_steps=5, eval_every=5, log=lambda *_: None)
    assert main(["eval", "translation", str(path), "--encoder", "sparse"]) == 2
    assert "--encoder needs a transformer run" in capsys.readouterr().err
