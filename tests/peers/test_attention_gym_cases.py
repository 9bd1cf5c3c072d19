"""attention-gym's ``mask_mod`` and ``score_mod`` examples (``attn_gym/masks``, ``attn_gym/mods``
and their tests in ``test/``), re-expressed as attnkit masks and score modifiers.

Each example is written here as a FlexAttention-style function ``mask_mod(b, h, q_idx, kv_idx)``
or ``score_mod(score, b, h, q_idx, kv_idx)``, turned into an attnkit mask with
``masks.from_mod`` (and, where attnkit has built-ins, also composed from them: ``causal()``,
``window()``, ``global_tokens()``) or into a modifier with ``scores.score_mod`` (and the
built-ins ``scores.alibi``, ``scores.softcap``). Checked here:

* the built-in compositions give the same boolean grid as the example's function, and the
  examples' structural properties (gym's tests: packed document masks, Longformer global
  tokens, block diffusion, shared prefix = duplicated causal samples);
* every exact implementation against a dense reference written in plain torch (scores,
  modifier, mask, softmax), outputs and gradients, in float64 with grouped-query heads;
* the same problems through ``torch.nn.attention.flex_attention`` (eager, CPU, forward: this
  torch has no flex backward on the CPU), against attnkit's result.

Masks: causal, sliding window, prefix LM, document (packed causal and a per-batch document
layout that reads ``b``), Longformer global + sliding window, NATTEN (2-D neighbourhood), block
diffusion, shared prefix. Score mods: ALiBi, tanh soft-capping, Sandwich, Graphormer spatial
bias (reads ``b`` and ``h``).

Documented difference: attnkit's ``scores.alibi`` is symmetric (``-slope * |i - j|``) where
gym's ALiBi example adds ``slope * (j - i)``; the two agree under a causal mask, and gym's signed
form runs as a ``scores.score_mod``. Not re-expressed: compiled kernels, CUDA-only tests, the
CuTe/Triton backends, linear-attention and KDA kernels, the tanh approximation (a PTX op).
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from peer_support import EXACT, close, dense_attention, randn, run_with_grads, skip_unsupported

import attnkit
from attnkit import masks, scores
from attnkit.call import make_call

B, H, HKV, D = 2, 4, 2, 8
L = 37  # not a multiple of any block size


# ---------------------------------------------------------------------------------------------
# the examples, as FlexAttention functions
# ---------------------------------------------------------------------------------------------


def causal_mod(b, h, q, kv):
    return q >= kv


def sliding_window_mod(window):
    return lambda b, h, q, kv: (q - kv <= window) & (q >= kv)


def prefix_lm_mod(prefix):
    return lambda b, h, q, kv: (kv < prefix) | (q >= kv)


def _doc_ids(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def _offsets(lengths):
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lengths).cumsum(0)])


def document_mod(lengths, inner=causal_mod):
    """Packed documents: same document, and ``inner`` on positions within the document."""
    doc, start = _doc_ids(lengths), _offsets(lengths)

    def mod(b, h, q, kv):
        return (doc[q] == doc[kv]) & inner(b, h, q - start[doc[q]], kv - start[doc[kv]])
    return mod


def packed_causal_document_mod(lengths):
    """gym's faster form: each query attends from its document's start up to itself."""
    doc, start = _doc_ids(lengths), _offsets(lengths)
    return lambda b, h, q, kv: (kv >= start[doc[q]]) & (q >= kv)


def per_batch_document_mod(doc_ids):
    """Document ids that differ per batch element: ``doc_ids (B, L)``; the mod reads ``b``."""
    return lambda b, h, q, kv: doc_ids[b, q] == doc_ids[b, kv]


def global_sliding_window_mod(window, is_global):
    return lambda b, h, q, kv: ((q - kv).abs() <= window) | is_global[q] | is_global[kv]


def natten_mod(width, height, kernel_w, kernel_h):
    """2-D neighbourhood attention on a ``width x height`` canvas, the kernel clamped inside it."""
    def mod(b, h, q, kv):
        qx, qy, kx, ky = q // width, q % width, kv // width, kv % width
        cx = qx.clamp(kernel_w // 2, (width - 1) - kernel_w // 2)
        cy = qy.clamp(kernel_h // 2, (height - 1) - kernel_h // 2)
        return ((cx - kx).abs() <= kernel_w // 2) & ((cy - ky).abs() <= kernel_h // 2)
    return mod


def block_diffusion_mod(seq_len, block):
    """BD3-LM training mask over [noised x_t | clean x_0], each ``seq_len`` long."""
    def mod(b, h, q, kv):
        q_noised, kv_noised = q < seq_len, kv < seq_len
        qb, kb = (q % seq_len) // block, (kv % seq_len) // block
        diagonal = (qb == kb) & (q_noised == kv_noised)
        offset_causal = (qb > kb) & q_noised & ~kv_noised
        block_causal = (qb >= kb) & ~q_noised & ~kv_noised
        return diagonal | offset_causal | block_causal
    return mod


def shared_prefix_mod(lengths, prefix_of):
    """Packed prompt/response documents: causal within a document, and a response document also
    sees all of its prompt document (``prefix_of[d]`` = the prompt of document d)."""
    doc, start = _doc_ids(lengths), _offsets(lengths)
    prefix_of = torch.tensor(prefix_of)

    def mod(b, h, q, kv):
        d = doc[q]
        p = prefix_of[d]
        own = (kv >= start[d]) & (q >= kv)
        prompt = (d != p) & (kv >= start[p]) & (kv < start[p + 1])
        return own | prompt
    return mod


def alibi_signed_mod(heads):
    """gym's ALiBi: ``score + slope_h * (kv - q)`` with ``slope_h = 2^(-8 (h + 1) / H)``."""
    return lambda s, b, h, q, kv: s + (kv - q) * torch.exp2(-(h + 1) * 8.0 / heads)


def softcap_mod(cap):
    return lambda s, b, h, q, kv: cap * torch.tanh(s / cap)


def sandwich_mod(heads, max_len, d_bar=16):
    """Sandwich: ``sum_i cos((q - kv) w_i) / ratio_h``, ``w_i = 10000^(-2i / d_bar)``,
    ``ratio_h = 8 (h + 1) / H``, from a table of relative distances."""
    freqs = 1.0 / 10000 ** (2 * torch.arange(d_bar // 2, dtype=torch.float64) / d_bar)
    dist = torch.arange(2 * max_len - 1, dtype=torch.float64) - (max_len - 1)
    table = torch.cos(dist.abs()[:, None] * freqs).sum(-1)
    head_scale = heads / (8.0 * torch.arange(1, heads + 1, dtype=torch.float64))
    return lambda s, b, h, q, kv: s + table[q - kv + max_len - 1] * head_scale[h]


def sandwich_bias_dense(heads, n, d_bar=16):
    """The paper's construction: inner products of sinusoidal position embeddings (H, n, n)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos / 10000 ** (2 * torch.arange(d_bar // 2, dtype=torch.float64) / d_bar)
    emb = torch.cat([ang.sin(), ang.cos()], -1)
    return (emb @ emb.T)[None] / (torch.arange(1, heads + 1, dtype=torch.float64) * 8 / heads)[:, None, None]


def shortest_paths(adjacency, max_distance):
    """Floyd-Warshall on (B, N, N) unweighted graphs; far or unreachable pairs share bucket
    ``max_distance + 1``."""
    n = adjacency.shape[-1]
    dist = torch.where(adjacency, 1, max(n, max_distance + 1))
    dist.diagonal(dim1=-2, dim2=-1).zero_()
    for m in range(n):
        dist = torch.minimum(dist, dist[:, :, m, None] + dist[:, None, m, :])
    return dist.clamp(max=max_distance + 1)


def graphormer_mod(spatial_bias, distances):
    return lambda s, b, h, q, kv: s + spatial_bias[h, distances[b, q, kv]]


# ---------------------------------------------------------------------------------------------
# the cases: (attnkit mask, dense bool grid (1|B, 1, T, S), attnkit score mods, dense score fn)
# ---------------------------------------------------------------------------------------------


def _grid(mod, lq=L, lk=L, batch=1, heads=1):
    """Evaluate a mask_mod on broadcast index tensors: (batch, heads, lq, lk) bool."""
    b = torch.arange(batch).view(-1, 1, 1, 1)
    h = torch.arange(heads).view(1, -1, 1, 1)
    q, kv = torch.arange(lq).view(1, 1, -1, 1), torch.arange(lk).view(1, 1, 1, -1)
    return mod(b, h, q, kv).expand(batch, heads, lq, lk)


def _score_fn(mod, lq=L, lk=L):
    """A dense (B, H, T, S) score function from a score_mod."""
    def fn(s):
        b = torch.arange(s.shape[0]).view(-1, 1, 1, 1)
        h = torch.arange(s.shape[1]).view(1, -1, 1, 1)
        return mod(s, b, h, torch.arange(lq).view(1, 1, -1, 1), torch.arange(lk).view(1, 1, 1, -1))
    return fn


DOCS = [5, 9, 1, 12, 10]  # sums to L
IS_GLOBAL = torch.zeros(L, dtype=torch.bool)
IS_GLOBAL[[0, 18, 36]] = True
PER_BATCH_DOCS = torch.stack([_doc_ids([20, 17]), _doc_ids([6, 6, 25])])  # (B, L)
SHARED_LENGTHS, SHARED_PREFIX_OF = [3, 2, 2, 2, 3, 2, 2, 2], [0, 0, 0, 0, 4, 4, 4, 4]
SLOPES = scores.alibi_slopes(H)


def _cases():
    g = torch.Generator().manual_seed(11)
    adjacency = torch.rand(B, L, L, generator=g) < 0.08
    adjacency = adjacency | adjacency.transpose(-1, -2)
    distances = shortest_paths(adjacency, max_distance=4)
    spatial = torch.randn(H, 6, generator=g, dtype=torch.float64)
    return {
        # name: (mask_mod or None, score_mod or None, attnkit mask, attnkit score mods, batch-dependent mask)
        "causal": (causal_mod, None, masks.causal(), (), False),
        "sliding_window": (sliding_window_mod(4), None, masks.causal() & masks.window(4, 0), (), False),
        "prefix_lm": (prefix_lm_mod(6), None, masks.causal() | masks.from_mod(lambda b, h, q, kv: kv < 6), (),
                      False),
        "document_causal": (document_mod(DOCS), None, masks.from_mod(document_mod(DOCS)), (), False),
        "document_packed": (packed_causal_document_mod(DOCS), None,
                            masks.from_mod(packed_causal_document_mod(DOCS)), (), False),
        "document_per_batch": (per_batch_document_mod(PER_BATCH_DOCS), None,
                               masks.from_mod(per_batch_document_mod(PER_BATCH_DOCS), batch=B), (), True),
        "global_sliding_window": (global_sliding_window_mod(3, IS_GLOBAL), None,
                                  masks.window(3) | masks.global_tokens(IS_GLOBAL.nonzero().flatten()), (), False),
        "natten": (natten_mod(6, 6, 3, 3), None, masks.from_mod(natten_mod(6, 6, 3, 3)), (), False),
        "block_diffusion": (block_diffusion_mod(18, 4), None, masks.from_mod(block_diffusion_mod(18, 4)), (), False),
        "shared_prefix": (shared_prefix_mod(SHARED_LENGTHS, SHARED_PREFIX_OF), None,
                          masks.from_mod(shared_prefix_mod(SHARED_LENGTHS, SHARED_PREFIX_OF)), (), False),
        "alibi_causal": (causal_mod, alibi_signed_mod(H), masks.causal(), (scores.alibi(SLOPES),), False),
        "alibi_signed_score_mod": (None, alibi_signed_mod(H), None,
                                   (scores.score_mod(alibi_signed_mod(H), "alibi_signed", additive=True),), False),
        "softcap": (None, softcap_mod(1.5), None, (scores.softcap(1.5),), False),
        "softcap_score_mod_causal": (causal_mod, softcap_mod(1.5), masks.causal(),
                                     (scores.score_mod(softcap_mod(1.5), "softcap"),), False),
        "sandwich_causal": (causal_mod, sandwich_mod(H, L), masks.causal(),
                            (scores.score_mod(sandwich_mod(H, L), "sandwich", additive=True),), False),
        "graphormer": (None, graphormer_mod(spatial, distances), None,
                       (scores.score_mod(graphormer_mod(spatial, distances), "graphormer", additive=True),), False),
    }


CASES = _cases()
LENGTHS = {"natten": 36, "block_diffusion": 36, "shared_prefix": sum(SHARED_LENGTHS)}

def _case_params():
    for name, case in CASES.items():
        for impl in EXACT:
            yield pytest.param(impl, name, id=f"{impl}-{name}")


def _problem(name):
    """q (B, H, n, D), k, v (B, HKV, n, D) in float64, the dense bool grid and the dense score fn."""
    n = LENGTHS.get(name, L)
    mask_mod, score_mod, _, _, per_batch = CASES[name]
    g = torch.Generator().manual_seed(len(name))
    q, k, v = randn(B, H, n, D, gen=g, scale=2.0), randn(B, HKV, n, D, gen=g, scale=2.0), randn(B, HKV, n, D, gen=g)
    allowed = None if mask_mod is None else _grid(mask_mod, n, n, batch=B if per_batch else 1)
    score_fn = None if score_mod is None else _score_fn(score_mod, n, n)
    return q, k, v, allowed, score_fn


@pytest.mark.parametrize("impl,name", list(_case_params()))
def test_against_dense_reference(impl, name):
    q, k, v, allowed, score_fn = _problem(name)
    _, _, mask, mods, _ = CASES[name]
    skip_unsupported(impl, q, k, v, mask, score_mods=mods)
    got = run_with_grads(lambda q, k, v: attnkit.attention(q, k, v, mask, score_mods=mods, impl=impl), q, k, v)
    want = run_with_grads(lambda q, k, v: dense_attention(q, k, v, allowed, score_fn=score_fn), q, k, v)
    for part, a, w in zip(("out", "dq", "dk", "dv"), got, want):
        close(a, w, "out" if part == "out" else "grad", msg=f"{impl} {name} {part}")


@functools.cache
def _flex_output(name):
    """flex_attention's output for a case (eager, forward only; computed once per case)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v, _, _ = _problem(name)
    mask_mod, score_mod, _, _, per_batch = CASES[name]
    n = q.shape[2]
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, B if per_batch else None, None, n, n,
                                                                 device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)


@pytest.mark.parametrize("impl,name", list(_case_params()))
def test_against_flex_attention(impl, name):
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v, _, _ = _problem(name)
    _, _, mask, mods, _ = CASES[name]
    skip_unsupported(impl, q, k, v, mask, score_mods=mods)
    got = attnkit.attention(q, k, v, mask, score_mods=mods, impl=impl)
    torch.testing.assert_close(got, _flex_output(name), atol=1e-10, rtol=1e-10)


def test_flex_agrees_with_the_dense_reference():
    """The dense reference of this file and flex_attention agree, so the two comparisons above
    check one thing."""
    for name in CASES:
        q, k, v, allowed, score_fn = _problem(name)
        want = dense_attention(q, k, v, allowed, score_fn=score_fn)
        torch.testing.assert_close(_flex_output(name), want, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------------------------
# the masks as grids: built-ins against the example functions, and the examples' properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[0] is not None])
def test_mask_grid_equals_the_mask_mod(name):
    mask_mod, _, mask, _, per_batch = CASES[name]
    n = LENGTHS.get(name, L)
    want = _grid(mask_mod, n, n, batch=B if per_batch else 1)
    got = mask.dense4(n, n).expand_as(want)
    assert torch.equal(got, want), f"{name}:\n{masks.to_string(got[0, 0])}"


def test_a_mask_mod_reading_b_must_declare_the_batch():
    """FlexAttention's create_block_mask takes B=; attnkit's from_mod takes batch=. A predicate that
    reads b while declared batch-independent is refused, never evaluated at b = 0 for everyone."""
    n = L
    q = randn(B, H, n, D, gen=torch.Generator().manual_seed(0))
    undeclared = masks.from_mod(per_batch_document_mod(PER_BATCH_DOCS))
    with pytest.raises(attnkit.AttnKitError, match="depends on b .*batch="):
        attnkit.attention(q, q, q, undeclared, impl="reference")


@pytest.mark.parametrize("lengths", [[3, 2, 5], [1, 4, 1, 7], [6]])
def test_packed_causal_document_mask_equals_generic(lengths):
    n = sum(lengths)
    generic = masks.from_mod(document_mod(lengths)).dense(n, n)
    packed = masks.from_mod(packed_causal_document_mod(lengths)).dense(n, n)
    assert torch.equal(generic, packed)
    assert torch.equal(generic, torch.block_diag(*[torch.ones(m, m, dtype=torch.bool).tril() for m in lengths]))


@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("positions", [[], [0], [0, 7, 15]])
def test_global_sliding_window_built_ins(window, positions):
    """Longformer: attnkit's ``window(w) | global_tokens(idx)`` is gym's mask_mod."""
    is_global = torch.zeros(16, dtype=torch.bool)
    is_global[positions] = True
    built = masks.window(window)
    if positions:
        built = built | masks.global_tokens(positions)
    assert torch.equal(built.dense(16, 16), _grid(global_sliding_window_mod(window, is_global), 16, 16)[0, 0])


@pytest.mark.parametrize("seq_len,block", [(8, 1), (8, 4), (12, 4), (16, 16), (100, 7)])
def test_block_diffusion_structure(seq_len, block):
    grid = masks.from_mod(block_diffusion_mod(seq_len, block)).dense(2 * seq_len, 2 * seq_len)
    noised, clean = grid[:seq_len], grid[seq_len:]
    assert not clean[:, :seq_len].any()  # clean tokens never see noised ones
    blocks = [torch.ones(min(block, seq_len - s), min(block, seq_len - s), dtype=torch.bool)
              for s in range(0, seq_len, block)]
    assert torch.equal(noised[:, :seq_len], torch.block_diag(*blocks))  # bidirectional within a block
    qb = torch.arange(seq_len) // block
    assert torch.equal(noised[:, seq_len:], qb[:, None] > qb[None, :])  # strictly earlier clean blocks
    assert torch.equal(clean[:, seq_len:], qb[:, None] >= qb[None, :])  # block-causal among clean tokens


@pytest.mark.parametrize("impl", EXACT)
def test_shared_prefix_equals_duplicated_causal_samples(impl):
    """Each prompt + response pair, run as its own causal sequence, gives the same rows as the
    packed shared-prefix mask."""
    mask = CASES["shared_prefix"][2]
    n = sum(SHARED_LENGTHS)
    g = torch.Generator().manual_seed(0)
    q, k, v = (randn(1, 2, n, 8, gen=g) for _ in range(3))
    skip_unsupported(impl, q, k, v, mask)
    packed = attnkit.attention(q, k, v, mask, impl=impl)
    start = _offsets(SHARED_LENGTHS).tolist()
    for d, p in enumerate(SHARED_PREFIX_OF):
        if d == p:
            continue
        idx = list(range(start[p], start[p + 1])) + list(range(start[d], start[d + 1]))
        alone = attnkit.attention(q[:, :, idx], k[:, :, idx], v[:, :, idx], masks.causal(), impl="reference")
        close(packed[:, :, idx], alone)
    row = mask.dense(n, n)[8]  # gym's spot check: query 8 sees prompt [0, 3) and its own [7, 9)
    assert row.nonzero().flatten().tolist() == [0, 1, 2, 7, 8]


# ---------------------------------------------------------------------------------------------
# the score mods
# ---------------------------------------------------------------------------------------------


def test_alibi_slopes_are_gyms():
    h = torch.arange(H)
    torch.testing.assert_close(scores.alibi_slopes(H).double(), torch.exp2(-(h + 1) * 8.0 / H).double())


def test_alibi_is_symmetric_documented_difference():
    """attnkit's alibi adds -slope * |i - j|; gym's adds slope * (j - i): equal where j <= i."""
    s = torch.zeros(1, H, L, L, dtype=torch.float64)
    mine = _score_fn(lambda s, b, h, q, kv: scores.alibi(SLOPES)(s, b, h, q, kv, L, L))(s)
    gyms = _score_fn(alibi_signed_mod(H))(s)
    lower = torch.ones(L, L, dtype=torch.bool).tril()
    torch.testing.assert_close(mine[..., lower], gyms[..., lower])
    torch.testing.assert_close(mine[..., ~lower], -gyms[..., ~lower])


def test_sandwich_table_matches_the_paper_construction():
    got = _score_fn(sandwich_mod(H, 64), 64, 64)(torch.zeros(1, H, 64, 64, dtype=torch.float64))[0]
    torch.testing.assert_close(got, sandwich_bias_dense(H, 64), atol=1e-9, rtol=1e-9)


def test_shortest_paths_on_a_path_graph():
    n = 8
    adjacency = torch.zeros(1, n, n, dtype=torch.bool)
    i = torch.arange(n - 1)
    adjacency[0, i, i + 1] = adjacency[0, i + 1, i] = True
    want = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().clamp(max=4)
    assert torch.equal(shortest_paths(adjacency, 3)[0], want)


def test_softcap_bounds_the_scores():
    q, k, v, _, _ = _problem("softcap")
    call_scores = make_call(q, k, v, score_mods=(scores.softcap(1.5),)).scores()
    assert call_scores.abs().max() < 1.5
    raw = (q @ k.repeat_interleave(H // HKV, 1).transpose(-2, -1)) / math.sqrt(D)
    assert raw.abs().max() > 3  # the cap is doing something here
    torch.testing.assert_close(call_scores, 1.5 * torch.tanh(raw / 1.5))
