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
