"""Shared fixtures: a tiny random Llama with the real default tokenizer, saved as a HF folder."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer():
    from reasonloop.models import load_tokenizer

    return load_tokenizer("default")


def build_tiny_model(vocab_size: int, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A HF folder (config, safetensors, tokenizer, chat template) of a 2-layer, 64-wide Llama."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    model = build_tiny_model(len(tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def digit_model_dir(tokenizer, out, favoured=7):
    """A 2-layer Llama that answers a prompt with one digit then end-of-turn: P(favoured) ~ 0.52, others ~ 0.05.

    Attention and MLP outputs are zeroed, so the next token depends only on the current one through the
    tied embeddings: every non-digit token points along axis 0 where digits are large; digit d points
    along axis 1+d, where only end-of-turn is large. Trainable like any model (gradients reach o_proj).
    """
    model = build_tiny_model(len(tokenizer))
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # [V, 64], tied to the LM head
        emb.normal_(0, 0.02)
        emb[:, 0], emb[:, 1:11] = 1.0, 0.0
        for d, i in enumerate(digits):
            emb[i] = 0.0
            emb[i, 0], emb[i, 1 + d] = (3.2 if d == favoured else 3.0), 3.0
        emb[tokenizer.eos_token_id] = 0.0
        emb[tokenizer.eos_token_id, 1:11] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
