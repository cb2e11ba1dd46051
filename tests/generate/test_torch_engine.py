"""The torch engine on a tiny random Llama: outputs, finish reasons, batching, log-probs, weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_model
from reasonloop.errors import UserError
from reasonloop.generate import SamplingParams, make_engine
from reasonloop.generate import llama_fast, torch_engine
from reasonloop.generate.llama_fast import WEIGHT_FIRST_MAX_ROWS, _linear, attention_chunks
from reasonloop.generate.torch_engine import TorchEngine, common_prefix_len

LOGPROB_TOL = 1e-4  # fp32 engine vs fp32 teacher-forced HF forward


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(len(tokenizer)).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["Hello there, how are you", "What is 2+2?", "x", "Tell me a story about a cat and a dog"]
    return [tokenizer.encode(t) for t in texts]


def engine(model, tokenizer, **kw) -> TorchEngine:
    kw.setdefault("progress", False)
    return TorchEngine(model, tokenizer, dtype=torch.float32, **kw)


def hf_greedy(model, prompt, max_new, eos):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=sorted(eos), pad_token_id=0)
    return out[0, len(prompt):].tolist()


def teacher_forced(model, prompt, tokens, temperature):
    """Log-prob of each generated token under log_softmax(logits / T) of one full forward pass."""
    ids = torch.tensor([prompt + tokens])
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()  # [N, V]
    logp = torch.log_softmax(logits / (temperature or 1.0), -1)
    return logp.gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def frequent_token(model, tokenizer, prompts):
    """A token greedy decoding emits early in some prompts, used as EOS to make lengths differ."""
    out = engine(model, tokenizer).generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    return out[0][0].token_ids[2]


def test_shapes_and_finish_reasons(model, tokenizer, prompts):
    out = engine(model, tokenizer, max_batch=5).generate(prompts[:2], SamplingParams(n=3, max_new_tokens=7))
    assert [len(group) for group in out] == [3, 3]
    for index, group in enumerate(out):
        for s in group:
            assert s.prompt_index == index
            assert len(s.token_ids) == len(s.logprobs) <= 7
            assert s.finish_reason in ("eos", "length")
            assert (s.finish_reason == "length") == (len(s.token_ids) == 7)
            assert all(lp <= 0 for lp in s.logprobs)


def test_eos_ends_sequence_and_is_kept(model, tokenizer, prompts):
    eng = engine(model, tokenizer)
    free = eng.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=8))[0][0]
    eng.eos = {free.token_ids[3]}
    cut = free.token_ids.index(free.token_ids[3]) + 1
    s = eng.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=8))[0][0]
    assert s.finish_reason == "eos"
    assert s.token_ids == free.token_ids[:cut]


def test_stop_string_cuts_text(model, tokenizer, prompts):
    eng = engine(model, tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    free = eng.generate(prompts[1:2], params)[0][0]
    stop = tokenizer.decode(free.token_ids[4:6])
    s = eng.generate(prompts[1:2], SamplingParams(temperature=0, max_new_tokens=12, stop=(stop,)))[0][0]
    assert s.finish_reason == "stop"
    assert s.text == free.text[:free.text.find(stop)]
    assert s.token_ids == free.token_ids[:len(s.token_ids)] and len(s.token_ids) <= 6


def test_fixed_seed_is_deterministic_and_seed_matters(model, tokenizer, prompts):
    eng = engine(model, tokenizer, max_batch=2)
    run = lambda seed: [[s.token_ids for s in g] for g in eng.generate(  # noqa: E731
        prompts[:2], SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=seed))]
    first = run(5)
    assert eng.fast.k_cache is None  # the KV cache lives only during a call, not between calls
    assert run(5) == first
    assert run(6) != first


def test_kv_cache_is_sized_to_the_call_and_dropped_after_it(model, tokenizer, prompts):
    """The cache holds min(max_batch, prompts x n) slots of (longest prompt + max_new_tokens) positions
    while the call runs, and nothing after it (it would sit through an RL update otherwise)."""
    eng = engine(model, tokenizer, max_batch=64)
    seen = []
    allocate = eng.fast.allocate
    eng.fast.allocate = lambda slots, max_len: (allocate(slots, max_len), seen.append(eng.fast.k_cache.shape))
    eng.generate(prompts[:2], SamplingParams(n=3, temperature=1.0, max_new_tokens=5))
    layers, kv, dim = eng.fast.n_layers, eng.fast.n_kv, eng.fast.head_dim
    assert seen == [(layers, 6, kv, max(len(p) for p in prompts[:2]) + 5, dim)]
    assert eng.fast.k_cache is None and eng.fast.v_cache is None
    assert eng.fast.layers == [] and eng.fast.stale()  # the fused weights are rebuilt at the next call


def test_n_samples_share_the_prompt_and_differ(model, tokenizer, prompts):
    out = engine(model, tokenizer, max_batch=3).generate(
        prompts[:1], SamplingParams(n=5, temperature=1.0, max_new_tokens=8, seed=0))
    assert len({tuple(s.token_ids) for s in out[0]}) > 1
    for s in out[0]:  # samples 3 and 4 start from the saved prompt KV once slots free up
        got, want = torch.tensor(s.logprobs), teacher_forced(model, prompts[0], s.token_ids, 1.0)
        assert torch.allclose(got, want, atol=LOGPROB_TOL)


@pytest.mark.parametrize("max_batch", [2, 4])
def test_continuous_batching_matches_one_at_a_time_and_hf(model, tokenizer, prompts, max_batch):
    # 2: finished rows make room for queued prompts; 4: every prompt at once, so a row finishing in the
    # middle of the batch has its slot taken by a live row from above it.
    eos = {frequent_token(model, tokenizer, prompts)}
    params = SamplingParams(temperature=0, max_new_tokens=10)
    batched, single = engine(model, tokenizer, max_batch=max_batch), engine(model, tokenizer, max_batch=1)
    batched.eos = single.eos = eos
    many = batched.generate(prompts, params)
    lengths = [len(g[0].token_ids) for g in many]
    assert any(n < max(lengths[i + 1:]) for i, n in enumerate(lengths[:-1]))  # a row finished before later ones
    for prompt, group in zip(prompts, many):
        alone = single.generate([prompt], params)[0][0]
        assert group[0].token_ids == alone.token_ids
        # Log-probs too: a random tiny model's greedy tokens barely depend on the context, so a row decoded
        # against another row's cache could still pick the same ones.
        assert torch.allclose(torch.tensor(group[0].logprobs), torch.tensor(alone.logprobs), atol=LOGPROB_TOL)
        assert group[0].token_ids == hf_greedy(model, prompt, 10, eos)


def test_batched_prefill_after_shared_prefix_matches_hf(model, tokenizer, prompts):
    # One wave prefills prompts of different lengths together, after a prefix they all share.
    shared = tokenizer.encode("System: answer briefly and carefully.")
    long_prompts = [shared + p for p in prompts]
    params = SamplingParams(n=2, temperature=0, max_new_tokens=8)
    out = engine(model, tokenizer, max_batch=8).generate(long_prompts, params)
    for prompt, group in zip(long_prompts, out):
        assert group[0].token_ids == group[1].token_ids == hf_greedy(model, prompt, 8, set())
        want = teacher_forced(model, prompt, group[0].token_ids, 0.0)
        assert torch.allclose(torch.tensor(group[0].logprobs), want, atol=LOGPROB_TOL)


@pytest.mark.parametrize("budget", [1, 12])
def test_prefill_split_into_forwards_draws_the_same_samples(model, tokenizer, prompts, budget, monkeypatch):
    # 1: every prompt in its own forward; 12: some forwards hold two prompts.
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=5, seed=4)
    whole = engine(model, tokenizer).generate(prompts, params)
    monkeypatch.setattr(torch_engine, "PREFILL_TOKENS", budget)
    split = engine(model, tokenizer).generate(prompts, params)
    for a, b in zip((s for g in whole for s in g), (s for g in split for s in g)):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_packed_prefill_equals_one_prompt_at_a_time(model, tokenizer, prompts):
    # A wave is packed end to end (no padding): each prompt's logits and cached K/V are those it gets alone,
    # after a shared prefix restored into every slot.
    fast = engine(model, tokenizer).fast
    fast.allocate(len(prompts) + 1, 64)
    with torch.inference_mode():
        prefix = [5, 6, 7]
        fast.prefill([prefix], [0])
        kv = fast.snapshot(0, len(prefix))
        slots = list(range(1, len(prompts) + 1))
        for slot in slots:
            fast.restore(kv, slot)
        together = fast.prefill(prompts, slots, start=len(prefix))  # [P, V]
        k_together, v_together = fast.k_cache.clone(), fast.v_cache.clone()
        for row, (prompt, slot) in enumerate(zip(prompts, slots)):
            fast.restore(kv, slot)
            alone = fast.prefill([prompt], [slot], start=len(prefix))[0]
            assert torch.allclose(together[row], alone, atol=1e-5)
            end = len(prefix) + len(prompt)
            assert torch.allclose(k_together[:, slot, :, :end], fast.k_cache[:, slot, :, :end], atol=1e-5)
            assert torch.allclose(v_together[:, slot, :, :end], fast.v_cache[:, slot, :, :end], atol=1e-5)


def test_attention_chunks_read_each_run_of_rows_up_to_its_longest():
    assert attention_chunks([9, 4, 7, 2, 3], rows=2) == [(0, 2, 10), (2, 4, 8), (4, 5, 4)]
    assert attention_chunks([5, 6], rows=16) == [(0, 2, 7)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_decode_is_the_same_whatever_the_attention_chunks(model, tokenizer, prompts, monkeypatch, dtype, tol):
    # Rows at different positions: one row per chunk reads each row's keys only up to its own position,
    # one chunk for all reads up to the longest and masks the rest; the logits must agree.
    fast = TorchEngine(model, tokenizer, dtype=dtype, progress=False).fast
    fast.allocate(len(prompts), 64)
    with torch.inference_mode():
        fast.prefill(prompts, list(range(len(prompts))))
        tokens = torch.tensor([p[-1] for p in prompts])
        pos = torch.tensor([len(p) for p in prompts])
        logits = {}
        for rows in (1, 2, 64):
            monkeypatch.setattr(llama_fast, "ATTENTION_CHUNK_ROWS", rows)
            logits[rows] = fast.decode(tokens, pos)
    assert len(set(pos.tolist())) > 1
    assert torch.allclose(logits[1], logits[64], atol=tol)
    assert torch.allclose(logits[2], logits[64], atol=tol)


@pytest.mark.parametrize("rows", [1, 16, WEIGHT_FIRST_MAX_ROWS, WEIGHT_FIRST_MAX_ROWS + 1])
def test_weight_first_linear_equals_f_linear(rows):
    # Both branches (weight-first up to the row limit, F.linear above it), with a bias, on a 3-D input
    # as prefill passes it; the result keeps the input's leading shape and reshapes like F.linear's.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, rows, 24, generator=gen)
    weight, bias = torch.randn(40, 24, generator=gen), torch.randn(40, generator=gen)
    got = _linear(x, weight, bias)
    assert got.shape == (1, rows, 40)
    assert torch.allclose(got, F.linear(x, weight, bias), atol=1e-5)
    assert torch.equal(got.reshape(rows, 4, 10), got.contiguous().view(rows, 4, 10))


def test_logprobs_match_teacher_forced_forward(model, tokenizer, prompts):
    for temperature, n in ((0.0, 1), (0.7, 2)):
        params = SamplingParams(n=n, temperature=temperature, top_k=20, top_p=0.9, max_new_tokens=6, seed=2)
        out = engine(model, tokenizer, max_batch=3).generate(prompts, params)
        for prompt, group in zip(prompts, out):
            for s in group:
                want = teacher_forced(model, prompt, s.token_ids, temperature)
                assert torch.allclose(torch.tensor(s.logprobs), want, atol=LOGPROB_TOL)


def test_generic_hf_path_matches_fast_path(model, tokenizer, prompts):
    params = SamplingParams(n=2, temperature=0, max_new_tokens=6)
    fast = engine(model, tokenizer, max_batch=3).generate(prompts[:3], params)
    generic = engine(model, tokenizer, max_batch=3, fast=False).generate(prompts[:3], params)
    assert [[s.token_ids for s in g] for g in fast] == [[s.token_ids for s in g] for g in generic]
    for a, b in zip(fast, generic):
        assert torch.allclose(torch.tensor(a[0].logprobs), torch.tensor(b[0].logprobs), atol=LOGPROB_TOL)


def test_weight_changes_reach_the_next_generate(tokenizer, prompts):
    model = build_tiny_model(len(tokenizer), seed=1).eval()
    eng = engine(model, tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    before = eng.generate(prompts[:1], params)[0][0].token_ids
    with torch.no_grad():  # an in-place edit, as an optimizer step makes; large enough to change greedy output
        for p in model.model.layers[0].mlp.parameters():
            p.mul_(10.0)
    after = eng.generate(prompts[:1], params)[0][0].token_ids
    assert after == hf_greedy(model, prompts[0], 8, eng.eos) and after != before
    other = build_tiny_model(len(tokenizer), seed=2).eval()
    eng.update_weights(other)
    assert eng.generate(prompts[:1], params)[0][0].token_ids == hf_greedy(other, prompts[0], 8, eng.eos)


def test_peft_lora_model_uses_adapter_weights(tokenizer, prompts):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_model(len(tokenizer), seed=3),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    s = engine(model, tokenizer).generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=8))[0][0]
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False,
                             eos_token_id=2, pad_token_id=0)
    assert s.token_ids == out[0, len(prompts[0]):].tolist()[:len(s.token_ids)]
    assert torch.allclose(torch.tensor(s.logprobs), teacher_forced(model, prompts[0], s.token_ids, 0),
                          atol=LOGPROB_TOL)


def test_progress_bar_on_and_off(model, tokenizer, prompts, capsys):
    params = SamplingParams(max_new_tokens=4)
    for show in (False, True):
        out = make_engine(model, tokenizer, kind="torch", progress=show).generate(prompts[:2], params)
        assert len(out) == 2
    assert "generate" in capsys.readouterr().err


def test_common_prefix_leaves_each_prompt_a_token():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert common_prefix_len([[7], [7, 8]]) == 0
    assert common_prefix_len([[1, 2], [3, 2]]) == 0


def test_bad_input_messages(model, tokenizer):
    with pytest.raises(UserError, match="^generate: empty prompt"):
        engine(model, tokenizer).generate([[]], SamplingParams())
    with pytest.raises(UserError, match="^max_batch: expected >= 1, got 0$"):
        engine(model, tokenizer, max_batch=0)
    with pytest.raises(UserError, match="^engine: expected one of auto, torch, vllm, got 'fast'$"):
        make_engine(model, tokenizer, kind="fast")
