"""Recurrent attention modules (Bahdanau, Luong) against their formulas, and a seeded
encoder-decoder that learns to reverse sequences."""

import pytest
import torch

from attnkit import masks
from attnkit.errors import AttnKitError, ShapeError
from attnkit.nn import AdditiveAttention, LuongAttention, Seq2SeqRNN

B, T, S = 3, 4, 6


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread avoids oversubscription on shared cores
    yield
    torch.set_num_threads(n)


def _softmax_ctx(e, values, mask=None):
    if mask is not None:
        e = e.masked_fill(~mask[:, None, :], float("-inf"))
    w = torch.softmax(e, -1)
    return w @ values, w


def test_additive_matches_bahdanau_formula_with_different_dims():
    torch.manual_seed(0)
    att = AdditiveAttention(query_dim=5, key_dim=7, attn_dim=9)
    q, k, v = torch.randn(B, T, 5), torch.randn(B, S, 7), torch.randn(B, S, 3)
    e = torch.tanh((q @ att.w_q.T)[:, :, None] + (k @ att.w_k.T)[:, None]) @ att.v  # (B, T, S)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 4:] = False
    want_ctx, want_w = _softmax_ctx(e, v, mask)
    ctx, w = att(q, k, v, mask=mask)
    torch.testing.assert_close(ctx, want_ctx)
    torch.testing.assert_close(w, want_w)
    assert (w[1, :, 4:] == 0).all()
    ctx1, w1 = att(q[:, 0], k, v, mask=mask)  # one decoder step (B, Dq)
    assert ctx1.shape == (B, 3) and w1.shape == (B, S)
    torch.testing.assert_close(ctx1, want_ctx[:, 0])


@pytest.mark.parametrize("method", ["dot", "general", "concat"])
def test_luong_scores(method):
    torch.manual_seed(1)
    dq, dk = (8, 8) if method == "dot" else (8, 5)
    att = LuongAttention(dq, dk, method=method)
    q, k = torch.randn(B, T, dq), torch.randn(B, S, dk)
    if method == "dot":
        e = q @ k.transpose(1, 2)
    elif method == "general":
        e = q @ att.weight @ k.transpose(1, 2)
    else:
        qk = torch.cat((q[:, :, None].expand(B, T, S, dq), k[:, None].expand(B, T, S, dk)), -1)
        e = torch.tanh(qk @ att.w_cat.T) @ att.v
    want_ctx, want_w = _softmax_ctx(e, k)
    ctx, w = att(q, k)
    torch.testing.assert_close(ctx, want_ctx)
    torch.testing.assert_close(w, want_w)
    if method == "dot":
        assert not list(att.parameters())
        return
    ctx.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in att.parameters())


def test_recurrent_attention_accepts_attnkit_masks_and_impl():
    torch.manual_seed(2)
    att = LuongAttention(6, method="general")
    q, k = torch.randn(B, S, 6), torch.randn(B, S, 6)
    _, w = att(q, k, mask=masks.causal(), impl="reference")
    assert (w.triu(1) == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, S))


def test_recurrent_attention_errors():
    with pytest.raises(ShapeError, match="query_dim == key_dim"):
        LuongAttention(4, 5, method="dot")
    with pytest.raises(AttnKitError, match="method"):
        LuongAttention(4, method="bilinear")
    att = AdditiveAttention(4, 6)
    with pytest.raises(ShapeError, match=r"query must be \(B, 4\)"):
        att(torch.randn(B, 5), torch.randn(B, S, 6))
    with pytest.raises(ShapeError, match=r"keys must be \(B, S, 6\)"):
        att(torch.randn(B, 4), torch.randn(B, S, 4))
    with pytest.raises(ShapeError, match="values"):
        att(torch.randn(B, 4), torch.randn(B, S, 6), torch.randn(B, S + 1, 2))
    with pytest.raises(AttnKitError, match="cell"):
        Seq2SeqRNN(5, 5, cell="rnn")


@pytest.mark.parametrize("cell,attention", [("gru", "additive"), ("lstm", "general"), ("gru", "dot")])
def test_seq2seq_learns_to_reverse(one_thread, cell, attention):
    """A real learning test: 300 Adam steps on random digit strings, greedy decoding on held-out
    strings must reverse > 95% of the tokens, and attention must peak near the mirrored position."""
    torch.manual_seed(0)
    vocab, length, steps = 10, 6, 300  # tokens 1..9, 0 = BOS
    model = Seq2SeqRNN(vocab, vocab, emb_dim=32, hidden=64, cell=cell, attention=attention)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.1, 1 - s / steps))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        src = torch.randint(1, vocab, (64, length), generator=gen)
        tgt = src.flip(1)
        tgt_in = torch.cat((torch.zeros(64, 1, dtype=torch.long), tgt[:, :-1]), 1)
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in).reshape(-1, vocab), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    test_src = torch.randint(1, vocab, (256, length), generator=gen)
    acc = (model.generate(test_src, length, bos=0) == test_src.flip(1)).float().mean().item()
    assert acc > 0.95, f"{cell}/{attention} reversal accuracy {acc:.3f}"
    with torch.no_grad():
        tgt = test_src.flip(1)
        tgt_in = torch.cat((torch.zeros(256, 1, dtype=torch.long), tgt[:, :-1]), 1)
        memory, state = model.encode(test_src)
        _, _, w = model.decode(tgt_in, memory, state)  # (B, T, S)
    # unidirectional encoder states also carry the previous token, so allow one position of slack
    near = ((w.argmax(-1) - torch.arange(length - 1, -1, -1)).abs() <= 1).float().mean().item()
    assert near > 0.8, f"attention peaks near the mirrored source position only {near:.2f} of the time"


def test_seq2seq_untrained_is_not_accurate():
    torch.manual_seed(0)
    model = Seq2SeqRNN(10, 10)
    src = torch.randint(1, 10, (256, 6))
    assert (model.generate(src, 6, bos=0) == src.flip(1)).float().mean() < 0.5
