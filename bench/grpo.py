"""GRPO step time: TRL GRPOTrainer (no vLLM) against reasonloop's GRPO stage on the same prompts, in one run.

The default model in the machine's best dtype (bf16 autocast where the CPU has fast bf16, else fp32; both
sides), the same 4 GSM8K training prompts every step (reasonloop's chat prompt), G=4
samples each at temperature 1.0, at most 128 new tokens, lr 1e-6 (constant), no KL term (so no reference
model), one optimizer step per rollout batch, the same reward: a hash of each completion's text
(bench/bench_rewards.py), so every group has variance and both sides update every step (the base model
solves none of these, and a flat group is skipped by reasonloop but not by TRL). A run in which
reasonloop skipped an update prints no ratio. TRL runs on its fastest CPU
settings: no vLLM, no gradient checkpointing, one generation per optimizer step (no old-logprob pass).
After one warm-up step, reports seconds per step and generated (completion) tokens/s end to end, i.e. over
the whole step: sampling, reward, policy update, weight refresh; each side's share of the matmul peak
(2 FLOPs per parameter per generated or prefilled token, 6 per trained token); and its peak resident memory (each
side runs in its own process: bench/apart.py). Writes bench/results/grpo.json; the last
line is ratio=<TRL s/step / ours>.

    python bench/grpo.py            # 1 warm-up + 5 measured steps per side
    python bench/grpo.py --quick    # 1 warm-up + 1 measured step per side, under 5 minutes
    python bench/grpo.py --steps 2  # 1 warm-up + 2 measured steps per side
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from reasonloop.config import Decoding, OptimConfig, RlStage, TaskConfig
from reasonloop.generate import make_engine
from reasonloop.models import load_model
from reasonloop.stages.rl import RLLoop, train_rl
from reasonloop.tasks import load_task
from reasonloop.tasks.prompt import encode_prompt, prompt_text
from reasonloop.verify.rewards import build_reward

from apart import best_dtype, cpu_kind, run_apart  # bench/apart.py: one side per fresh process, with its peak memory
from generate import matmul_peak  # bench/generate.py: best-of-N square matmul, GFLOP/s

ROOT = Path(__file__).resolve().parents[1]
REWARD = ["bench_rewards:text_hash"]  # bench/ is on sys.path, in the spawned sides too
PROMPTS, G, MAX_NEW, LR, TEMPERATURE, SEED = 4, 4, 128, 1e-6, 1.0, 0
PARAMS = 134.5e6  # SmolLM2-135M, embedding tied to the LM head


class StepClock:
    """Metrics sink for `train_rl` (it calls `log_metrics` after every step): stamps each step's end."""

    def __init__(self):
        self.stamps: list[tuple[float, float]] = []
        self.metrics: list[dict] = []

    def log_metrics(self, stage: str, step: int, metrics: dict) -> None:
        self.stamps.append(now())
        self.metrics.append(dict(metrics))

    def truncate_after(self, stage: str, step: int) -> None:
        """Resume drops rows past the restored step; a bench run starts at step 0 with none."""
        self.stamps, self.metrics = self.stamps[:step], self.metrics[:step]


def now() -> tuple[float, float]:
    """Wall clock and this process's CPU seconds (all threads): the second shows other load on the machine."""
    return time.perf_counter(), time.process_time()


def summarise(start: tuple[float, float], stamps: list[tuple[float, float]], tokens: list[int],
              gen_seconds: list[float], rewards: list[float]) -> dict:
    """Step times from the end-of-step stamps; step 0 is the warm-up and is left out of the means."""
    times = [(b[0] - a[0], b[1] - a[1]) for a, b in zip([start] + stamps[:-1], stamps)]
    measured, toks = [w for w, _ in times[1:]], tokens[1:]
    cpu = sum(c for _, c in times[1:]) / len(measured)
    return {"warmup_seconds": round(times[0][0], 2), "step_seconds": [round(t, 2) for t in measured],
            "s_per_step": sum(measured) / len(measured), "cpu_s_per_step": cpu,
            "threads_busy": cpu / (sum(measured) / len(measured)), "load_avg_1min": os.getloadavg()[0],
            "completion_tokens": toks,
            "tokens_per_s": sum(toks) / sum(measured),
            "mean_completion_len": sum(toks) / (len(toks) * PROMPTS * G),
            "gen_seconds_per_step": sum(gen_seconds[1:]) / len(measured),
            "reward_mean": sum(rewards[1:]) / len(measured)}


def run_ours(problems, task_cfg, steps: int, dtype: str) -> dict:
    policy, tok = load_model("default", dtype="fp32", trainable=True)
    cfg = RlStage(kind="rl", algorithm="grpo", steps=steps, prompts_per_step=PROMPTS, group_size=G,
                  decoding=Decoding(temperature=TEMPERATURE, max_new_tokens=MAX_NEW), kl_coef=0.0, reward=REWARD,
                  optim=OptimConfig(lr=LR, schedule="constant"), save_every=10_000, seed=SEED)
    reward_fn = build_reward(cfg.reward, None, task_cfg)
    engine = make_engine(policy, tok, kind="torch", max_batch=PROMPTS * G, dtype=dtype, progress=False)
    clock = StepClock()
    loop = RLLoop(policy, tok, problems, cfg, task_cfg=task_cfg, engine=engine, reward_fn=reward_fn, store=clock,
                  dtype=dtype)
    start = now()
    train_rl(loop, progress=False)
    m = clock.metrics
    out = summarise(start, clock.stamps, [round(x["response_tokens"] * x["samples"]) for x in m],
                    [x["gen_seconds"] for x in m], [x["reward_mean"] for x in m])
    return {**out, "skipped_updates": sum(1 for x in m if not x.get("trained_samples"))}


def run_trl(problems, task_cfg, steps: int, dtype: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    policy, tok = load_model("default", dtype="fp32", trainable=True)
    reward_fn = build_reward(REWARD, None, task_cfg)
    texts = [prompt_text(tok, p.question, task_cfg.prompt, task_cfg.answer_format) for p in problems]
    # TRL tokenizes plain-text prompts itself; they must be the very ids reasonloop samples from.
    if [tok(t)["input_ids"] for t in texts] != [encode_prompt(tok, t) for t in texts]:
        raise RuntimeError("TRL would tokenize the prompts differently from reasonloop")
    tokens: list[int] = []
    rewards: list[float] = []

    def hashed(prompts, completions, completion_ids, idx, **_):  # TRL's reward_funcs signature
        tokens.append(sum(len(c) for c in completion_ids))
        out = reward_fn(completions, [problems[i] for i in idx])
        rewards.append(sum(out) / len(out))
        return out

    gen_seconds: list[float] = []

    class Timed(GRPOTrainer):
        """Times rollout (generation + reward) so the report can split each step like reasonloop's."""

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            gen_seconds.append(time.perf_counter() - t)
            return out

    stamps: list[tuple[float, float]] = []
    begin: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            begin.append(now())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(now())

    # One step = 4 prompts x G completions, one generation and one optimizer step: batch of 16 completions,
    # no accumulation, generation batch = train batch.
    cfg = GRPOConfig(output_dir="/tmp/rl_bench_trl_grpo", per_device_train_batch_size=PROMPTS * G,
                     gradient_accumulation_steps=1, generation_batch_size=PROMPTS * G, num_generations=G,
                     max_completion_length=MAX_NEW, temperature=TEMPERATURE, top_p=1.0, top_k=0,
                     learning_rate=LR, lr_scheduler_type="constant", beta=0.0, num_iterations=1, epsilon=0.2,
                     scale_rewards="group", max_steps=steps, use_cpu=True, bf16=dtype == "bf16",
                     activation_checkpointing=False, logging_steps=10_000, save_strategy="no", report_to=[],
                     dataloader_num_workers=0, disable_tqdm=True, seed=SEED)
    ds = Dataset.from_list([{"prompt": t, "idx": i} for i, t in enumerate(texts)])
    trainer = Timed(model=policy, reward_funcs=[hashed], args=cfg, train_dataset=ds, processing_class=tok,
                    callbacks=[Clock()])
    trainer.train()
    return summarise(begin[0], stamps, tokens, gen_seconds, rewards)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 measured step per side instead of 5 (< 5 min)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side, after 1 warm-up step")
    ap.add_argument("--out", default=str(ROOT / "bench/results/grpo.json"))
    args = ap.parse_args()
    measured = args.steps or (1 if args.quick else 5)
    task_cfg = TaskConfig()
    problems = load_task(task_cfg).train[:PROMPTS]
    dtype = best_dtype()
    ours_name, trl_name = f"reasonloop GRPO {dtype} (torch engine)", f"trl GRPOTrainer {dtype} (hf generate)"
    rows = {ours_name: run_apart(run_ours, problems, task_cfg, 1 + measured, dtype),
            trl_name: run_apart(run_trl, problems, task_cfg, 1 + measured, dtype)}
    peak = matmul_peak(torch.bfloat16 if dtype == "bf16" else torch.float32, 2048 if dtype == "fp32" else 1024, 3)
    _, tok = load_model("default")
    prompt_tokens = G * sum(len(encode_prompt(tok, prompt_text(tok, p.question, task_cfg.prompt,
                                                                task_cfg.answer_format))) for p in problems)
    print(f"\nGRPO on {PROMPTS} GSM8K prompts x G={G}, <= {MAX_NEW} new tokens, lr {LR}, both sides {dtype}, "
          f"{torch.get_num_threads()} threads; 1 warm-up + {measured} measured steps per side; matmul peak "
          f"{peak:.0f} GFLOP/s; {cpu_kind()}")
    print(f"{'run':<40}{'s/step':>8}{'cpu s':>8}{'gen s':>8}{'tok/s':>8}{'mean len':>10}{'reward':>8}{'MFU':>7}"
          f"{'peak MB':>9}")
    for name, r in rows.items():
        # per step: every prompt and completion token is prefilled or decoded once (2 FLOPs per parameter)
        # and trained once (6); the same model on both sides, so the same count per token
        tokens = prompt_tokens + sum(r["completion_tokens"]) / len(r["completion_tokens"])
        r["mfu"] = 8 * PARAMS * tokens / r["s_per_step"] / (peak * 1e9)
        print(f"{name:<40}{r['s_per_step']:>8.1f}{r['cpu_s_per_step']:>8.1f}{r['gen_seconds_per_step']:>8.1f}"
              f"{r['tokens_per_s']:>8.1f}{r['mean_completion_len']:>10.1f}{r['reward_mean']:>8.2f}{r['mfu']:>7.1%}"
              f"{r.get('peak_rss_mb', float('nan')):>9.0f}")
        if r["threads_busy"] < 0.75 * torch.get_num_threads():  # CPU seconds / wall seconds per step
            print(f"  warning: {name} kept {r['threads_busy']:.1f} of {torch.get_num_threads()} threads busy "
                  f"(1-min load {r['load_avg_1min']:.1f}): other work on this machine slowed it")
    trl, ours = rows[trl_name]["s_per_step"], rows[ours_name]["s_per_step"]
    tok_ratio = rows[ours_name]["tokens_per_s"] / rows[trl_name]["tokens_per_s"]
    result = dict(model="SmolLM2-135M-Instruct", dtype=dtype, prompts=PROMPTS, group_size=G,
                  max_new_tokens=MAX_NEW, lr=LR, temperature=TEMPERATURE, warmup_steps=1, measured_steps=measured,
                  quick=args.quick, threads=torch.get_num_threads(), cpu=cpu_kind(), matmul_peak_gflops=peak,
                  prompt_tokens_per_step=prompt_tokens, runs=rows, ratio=trl / ours, tokens_per_s_ratio=tok_ratio,
                  memory_ratio=rows[ours_name]["peak_rss_mb"] / rows[trl_name]["peak_rss_mb"])  # < 1: we use less
    print(f"peak resident memory, ours / TRL: {result['memory_ratio']:.2f}")
    skipped = rows[ours_name]["skipped_updates"]
    if skipped:  # the two sides did different work: no ratio
        result.update(ratio=None, tokens_per_s_ratio=None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if skipped:
        raise SystemExit(f"reasonloop skipped {skipped} update(s) (groups without reward variance) while TRL "
                         "ran every one: no ratio")
    print(f"ratio={trl / ours:.2f}")


if __name__ == "__main__":
    main()
