"""Per-(prompt, sample) seeding: a sample depends on its seed, its prompt and its index, never on the
batch it was drawn in (issue #18); the key and uniform functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny_model
from reasonloop.errors import UserError
from reasonloop.generate import SamplingParams
from reasonloop.generate.sampling import inverse_cdf, prompt_seed, sample_tokens, step_uniforms
from reasonloop.generate.torch_engine import TorchEngine

PARAMS = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=7)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(len(tokenizer)).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.encode(f"Question {i}: what is {i} times {i + 3}?") for i in range(24)]


def engine(model, tokenizer, **kw) -> TorchEngine:
    return TorchEngine(model, tokenizer, dtype=torch.float32, progress=False, **kw)


def tokens(out) -> list[list[list[int]]]:
    return [[s.token_ids for s in group] for group in out]


# --------------------------------------------------------------------------- pure functions


def test_step_uniforms_are_splitmix64_outputs():
    # SplitMix64 seeded with 0 outputs 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f
    # (the reference implementation, Vigna's splitmix64.c); a uniform is its top 53 bits / 2**53.
    want = [v >> 11 for v in (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)]
    got = step_uniforms([0, 0, 0], [0, 1, 2])
    assert got.dtype == torch.float64 and [int(u * 2 ** 53) for u in got.tolist()] == want
    # A row's uniform depends on its (key, step) alone: alone or among others, in any position.
    assert step_uniforms([5, 0, 9], [3, 0, 1]).tolist()[1] == got[0].item()


def test_prompt_seed_is_a_stable_64_bit_key():
    a = prompt_seed(0, "What is 2+2?", 0)
    assert a == 11124841951428257334  # pinned: a change here changes every sampled output
    assert 0 <= a < 2 ** 64 and prompt_seed(0, "What is 2+2?", 0) == a
    others = {prompt_seed(1, "What is 2+2?", 0), prompt_seed(0, "What is 2+3?", 0), prompt_seed(0, "What is 2+2?", 1),
              prompt_seed(0, [1, 2, 3], 0), prompt_seed(0, [1, 23], 0)}
    assert len(others) == 5 and a not in others


def test_inverse_cdf_picks_the_token_whose_slice_holds_the_uniform():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(6, 4)  # cdf 0.5, 0.8, 0.95, 1.0
    u = torch.tensor([0.0, 0.45, 0.55, 0.85, 0.97, 0.999999])
    got, logp = sample_tokens(logits, SamplingParams(temperature=1.0), u)
    assert got.tolist() == [0, 0, 1, 2, 3, 3]
    assert logp.tolist() == pytest.approx([math.log(p) for p in (0.5, 0.5, 0.3, 0.15, 0.05, 0.05)], abs=1e-6)
    # top-k 2 renormalises to 0.625 / 0.375: the uniform lands in the kept tokens only.
    got, _ = sample_tokens(logits[:3], SamplingParams(temperature=1.0, top_k=2), torch.tensor([0.6, 0.7, 0.999999]))
    assert got.tolist() == [0, 1, 1]


def test_bad_input_messages():
    logits = torch.zeros(2, 4)
    with pytest.raises(UserError, match=r"^sample_tokens: expected one uniform per row \(2\), got None$"):
        sample_tokens(logits, SamplingParams(temperature=1.0), None)
    with pytest.raises(UserError, match=r"^sample_tokens: expected one uniform per row \(2\), got \(3,\)$"):
        sample_tokens(logits, SamplingParams(temperature=1.0), torch.zeros(3))
    with pytest.raises(UserError, match="^prompt_seed: expected an int seed and sample index >= 0, got 0, -1$"):
        prompt_seed(0, "x", -1)


def test_engine_keys_bad_input_messages(model, tokenizer, prompts):
    eng = engine(model, tokenizer)
    with pytest.raises(UserError, match=r"^generate keys: expected 3 keys for each of 2 prompts, got lengths \[3\]$"):
        eng.generate(prompts[:2], PARAMS, keys=[[1, 2, 3]])
    with pytest.raises(UserError, match=r"^generate keys: expected ints in \[0, 2\*\*64\)$"):
        eng.generate(prompts[:1], PARAMS, keys=[[1, 2, -3]])


# --------------------------------------------------------------------------- the engine


def test_same_samples_at_batch_16_and_64(model, tokenizer, prompts):
    small = tokens(engine(model, tokenizer, max_batch=16).generate(prompts, PARAMS))
    large = tokens(engine(model, tokenizer, max_batch=64).generate(prompts, PARAMS))
    assert small == large
    assert len({tuple(t) for group in small for t in group}) > len(prompts)  # samples of a prompt differ


def test_a_prompt_alone_draws_what_it_draws_in_a_batch(model, tokenizer, prompts):
    eng = engine(model, tokenizer, max_batch=64)
    batched = tokens(eng.generate(prompts, PARAMS))
    for i in (0, 5, 23):
        assert tokens(eng.generate([prompts[i]], PARAMS)) == [batched[i]]
    # Other neighbours, another order: each prompt still draws its own samples.
    shuffled = [prompts[i] for i in (23, 5, 0)]
    assert tokens(eng.generate(shuffled, PARAMS)) == [batched[i] for i in (23, 5, 0)]


def test_generic_path_draws_the_fast_paths_samples(model, tokenizer, prompts):
    fast = tokens(engine(model, tokenizer, max_batch=8).generate(prompts[:6], PARAMS))
    generic = tokens(engine(model, tokenizer, max_batch=5, fast=False).generate(prompts[:6], PARAMS))
    assert fast == generic


def test_same_seed_same_samples_other_seed_other_samples(model, tokenizer, prompts):
    eng = engine(model, tokenizer, max_batch=16)
    first = tokens(eng.generate(prompts[:8], PARAMS))
    assert tokens(eng.generate(prompts[:8], PARAMS)) == first
    other = tokens(eng.generate(prompts[:8], SamplingParams(**{**PARAMS.__dict__, "seed": 8})))
    assert sum(a != b for ga, gb in zip(first, other) for a, b in zip(ga, gb)) >= 20  # of 24 samples


def test_explicit_keys_choose_the_stream(model, tokenizer, prompts):
    eng = engine(model, tokenizer, max_batch=16)
    params = SamplingParams(**{**PARAMS.__dict__, "n": 2})
    keys = [[prompt_seed(0, "same", 0), prompt_seed(0, "same", 1)]] * 2
    out = tokens(eng.generate([prompts[0], prompts[0]], params, keys=keys))
    assert out[0] == out[1] and out[0][0] != out[0][1]  # same key, same draw; another key, another
    default = tokens(eng.generate([prompts[0]], params))
    assert out[0] != default[0]


def test_greedy_ignores_keys_and_seed(model, tokenizer, prompts):
    eng = engine(model, tokenizer, max_batch=4)
    greedy = SamplingParams(n=2, temperature=0, max_new_tokens=8)
    plain = tokens(eng.generate(prompts[:6], greedy))
    seeded = tokens(eng.generate(prompts[:6], SamplingParams(**{**greedy.__dict__, "seed": 99}),
                                 keys=[[1, 2]] * 6))
    assert plain == seeded and all(g[0] == g[1] for g in plain)
    with torch.inference_mode():
        hf = model.generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False,
                            eos_token_id=sorted(eng.eos), pad_token_id=0)
    assert plain[0][0] == hf[0, len(prompts[0]):].tolist()


def test_two_level_inverse_cdf_equals_one_cumsum_and_skips_filtered_tokens():
    # 1000 tokens: 3 full blocks of 256 and a padded one; a whole block and scattered tokens filtered out.
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 1000, generator=gen)
    probs[:, 256:512] = 0
    probs[:, ::7] = 0
    probs[:, 999] = 0
    u = torch.rand(40, generator=gen, dtype=torch.float64)
    want = torch.searchsorted(probs.double().cumsum(-1), (u * probs.double().sum(-1))[:, None], right=True)[:, 0]
    assert torch.equal(inverse_cdf(probs, u), want)
    # Uniforms at the very top land on the last token with mass, never on a filtered one or the padding;
    # u = 1 stands for a target that rounding pushed to the row's total (past every cumulative sum).
    for top in (1 - 2 ** -53, 1.0):
        assert inverse_cdf(probs, torch.full((40,), top, dtype=torch.float64)).tolist() == [998] * 40
    probs[:, 768:] = 0  # the last block has no mass: the last token with mass is in the block before
    assert inverse_cdf(probs, torch.ones(40, dtype=torch.float64)).tolist() == [767] * 40
    # Only one token has mass: it is drawn for every uniform.
    one = torch.zeros(3, 600)
    one[:, 300] = 0.2
    assert inverse_cdf(one, torch.tensor([0.0, 0.5, 1 - 2 ** -53], dtype=torch.float64)).tolist() == [300] * 3
