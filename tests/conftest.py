"""Shared fixtures: a small-vocabulary tokenizer and a tiny random Llama over it, saved as a HF folder.

The tokenizer is the default model's (same special tokens, ids, pre-tokenizer and chat template) with its
BPE retrained to SMALL_VOCAB entries on arithmetic text: with the real 49k vocabulary the LM head of a
"tiny" model held 95% of its weights and dominated every forward. `real_tokenizer` is the real one.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

SMALL_VOCAB = 512


def _tokenizer_corpus() -> list[str]:
    """Text like the tests' prompts and answers, so they tokenize to few tokens (fixed seed: same merges)."""
    rng = random.Random(0)
    words = ("What is the sum product of and plus minus times divided by How many does have left each total "
             "Answer answer So Let us compute step first then Solve Think Question question reasoning").split()
    chat = ("system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\nassistant\n"
            "Give the final answer on its own line as 'Answer: <number>'. Put the final answer in \\boxed{}.")
    from reasonloop.tasks.prompt import INSTRUCTIONS

    corpus = [chat] * 50 + list(INSTRUCTIONS.values()) * 50
    for _ in range(2000):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        corpus.append(f"What is {a} + {b}? {a} + {b} = {a + b}\nAnswer: {a + b}\n#### {a + b} \\boxed{{{a + b}}} "
                      + " ".join(rng.choice(words) for _ in range(8)))
    return corpus


@pytest.fixture(scope="session")
def real_tokenizer():
    from reasonloop.models import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def tokenizer(real_tokenizer):
    """The default tokenizer with a SMALL_VOCAB-entry BPE: special tokens and chat template kept."""
    small = real_tokenizer.train_new_from_iterator(_tokenizer_corpus(), vocab_size=SMALL_VOCAB)
    small.chat_template = real_tokenizer.chat_template
    assert small.all_special_ids == real_tokenizer.all_special_ids  # build_tiny_model's bos/eos/pad ids
    return small


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


@pytest.fixture(scope="session")
def tiny_real_vocab_model_dir(tmp_path_factory, real_tokenizer):
    """The tiny model over the real 49k vocabulary, for tests whose numbers were measured with it (checkpoint
    sizes against a small filesystem, micro-batch counts from real token lengths)."""
    out = tmp_path_factory.mktemp("tiny-real-vocab") / "model"
    build_tiny_model(len(real_tokenizer)).save_pretrained(out)
    real_tokenizer.save_pretrained(out)
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


@pytest.fixture
def readme_reward_module(tmp_path, monkeypatch) -> str:
    """The README's TRL-style reward example written to trl_rewards.py on sys.path, as a user would."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("```python\n# trl_rewards.py") + len("```python\n")
    (tmp_path / "trl_rewards.py").write_text(readme[start: readme.index("```", start)])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "trl_rewards", raising=False)  # this test's copy, not a cached one
    return "trl_rewards"
