"""The same Whisper tiny.en weights in ``transformers``' ``WhisperForConditionalGeneration``
(fp32), for comparisons only: token and logit parity, WER with the same decoding, speed. It is
built from attnkit's reading of the CTranslate2 file, with transformers' own key names (no hub,
no download). Needs the ``[hf]`` extra."""

from __future__ import annotations

import torch
from torch import Tensor

from ...models.whisper import Whisper, read_ct2, whisper_dir
from ...models.whisper.decoding import DecodingOptions, LogitRules

__all__ = ["hf_whisper", "hf_greedy", "hf_logits"]


def hf_whisper(w: Whisper):
    """``transformers.WhisperForConditionalGeneration`` (eval, fp32) holding the package's weights."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2 = read_ct2(whisper_dir() / "model.bin")
    c = w.model.config
    cfg = WhisperConfig(vocab_size=c.n_vocab, num_mel_bins=c.n_mels, d_model=c.n_audio_state,
                        encoder_layers=c.n_audio_layer, decoder_layers=c.n_text_layer,
                        encoder_attention_heads=c.n_audio_head, decoder_attention_heads=c.n_text_head,
                        encoder_ffn_dim=4 * c.n_audio_state, decoder_ffn_dim=4 * c.n_text_state,
                        max_source_positions=c.n_audio_ctx, max_target_positions=c.n_text_ctx,
                        decoder_start_token_id=w.tokenizer.special.sot, bos_token_id=w.tokenizer.eot,
                        eos_token_id=w.tokenizer.eot, pad_token_id=w.tokenizer.eot)
    v = {k: t.float() for k, t in ct2.variables.items() if t.dim()}
    sd: dict[str, Tensor] = {}

    def ln(dst: str, src: str) -> None:
        sd[dst + ".weight"], sd[dst + ".bias"] = v[src + "/gamma"], v[src + "/beta"]

    def lin(dst: str, src: str) -> None:
        sd[dst + ".weight"], sd[dst + ".bias"] = v[src + "/weight"], v[src + "/bias"]

    def split(dst: str, src: str, names: tuple[str, ...]) -> None:
        for n, wt, b in zip(names, v[src + "/weight"].chunk(len(names)), v[src + "/bias"].chunk(len(names))):
            sd[f"{dst}.{n}.weight"] = wt
            if n != "k_proj":  # transformers' Whisper has no key bias (it is zero in the file)
                sd[f"{dst}.{n}.bias"] = b

    def layer(p: str, s: str) -> None:  # the self-attention and feed-forward parts of one layer
        ln(f"{p}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        split(f"{p}.self_attn", f"{s}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        lin(f"{p}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        ln(f"{p}.final_layer_norm", f"{s}/ffn/layer_norm")
        lin(f"{p}.fc1", f"{s}/ffn/linear_0")
        lin(f"{p}.fc2", f"{s}/ffn/linear_1")

    enc, dec = "model.encoder", "model.decoder"
    lin(f"{enc}.conv1", "encoder/conv1")
    lin(f"{enc}.conv2", "encoder/conv2")
    sd[f"{enc}.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    ln(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(c.n_audio_layer):
        layer(f"{enc}.layers.{i}", f"encoder/layer_{i}")
    sd[f"{dec}.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd["proj_out.weight"] = v["decoder/embeddings/weight"]
    sd[f"{dec}.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    ln(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(c.n_text_layer):
        p, s = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        layer(p, s)
        ln(f"{p}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        lin(f"{p}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        split(f"{p}.encoder_attn", f"{s}/attention/linear_1", ("k_proj", "v_proj"))
        lin(f"{p}.encoder_attn.out_proj", f"{s}/attention/linear_2")
    model = WhisperForConditionalGeneration(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"transformers' Whisper did not take the weights: missing {missing}, "
                           f"unexpected {unexpected}")
    return model


@torch.no_grad()
def hf_logits(hf, mel: Tensor, tokens: list[int]) -> Tensor:
    """transformers' logits ``(T, V)`` for ``tokens`` after ``mel (M, F)`` (no cache)."""
    return hf(input_features=mel[None], decoder_input_ids=torch.tensor([tokens])).logits[0]


@torch.no_grad()
def hf_greedy(hf, w: Whisper, mel: Tensor, options: DecodingOptions | None = None) -> list[int]:
    """Greedy decoding with transformers' model (its KV cache) and attnkit's logit rules, so the
    two decodings differ only in the network that computes the logits; returns the sampled tokens."""
    opts = options or DecodingOptions()
    prompt = w.tokenizer.sot_sequence(timestamps=opts.timestamps)
    rules = LogitRules(w, opts, len(prompt))
    enc = hf.model.encoder(mel[None]).last_hidden_state
    tokens = torch.tensor([prompt])
    past, new = None, tokens
    while tokens.shape[1] < min(len(prompt) + opts.max_tokens, w.model.config.n_text_ctx):
        out = hf(encoder_outputs=(enc,), decoder_input_ids=new, cache=past, use_cache=True)
        past = out.cache
        logits = rules(out.logits[:, -1].float().clone(), tokens)
        nxt = int(logits.argmax(dim=-1))
        if nxt == w.tokenizer.eot:
            break
        new = torch.tensor([[nxt]])
        tokens = torch.cat([tokens, new], dim=1)
    return tokens[0, len(prompt):].tolist()
