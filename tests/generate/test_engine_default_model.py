"""The torch engine on the real default model (SmolLM2-135M-Instruct, fp32): HF agreement, log-probs."""

from __future__ import annotations

import pytest
import torch

from reasonloop.generate import SamplingParams, make_engine

LOGPROB_TOL = 1e-4  # fp32 engine vs fp32 teacher-forced HF forward, 30 layers


@pytest.mark.slow
def test_default_model_greedy_matches_hf_and_logprobs_match_forward():
    from reasonloop.models import load_model

    model, tok = load_model("default", dtype="fp32", device="cpu")
    questions = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
                 "A train travels 60 km in 1.5 hours. What is its speed?"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True) for q in questions]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    eng = make_engine(model, tok, kind="torch", dtype=torch.float32, progress=False)
    greedy = eng.generate(prompts, SamplingParams(temperature=0, max_new_tokens=24))
    sampled = eng.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=24, seed=1))
    for prompt, group in zip(prompts, greedy):
        with torch.inference_mode():
            hf = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
        assert group[0].token_ids == hf[0, len(prompt):].tolist()[:len(group[0].token_ids)]
    for temperature, out in ((0.0, greedy), (0.7, sampled)):
        for prompt, group in zip(prompts, out):
            for s in group:
                ids = torch.tensor([prompt + s.token_ids])
                with torch.inference_mode():
                    logits = model(ids).logits[0, len(prompt) - 1:-1] / (temperature or 1.0)
                want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
                assert (torch.tensor(s.logprobs) - want).abs().max().item() < LOGPROB_TOL
