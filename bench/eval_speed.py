"""Benchmark: the default recipe's evaluation (500 held-out problems, greedy, its batch and length) through
reasonloop's torch engine and through Hugging Face `generate`, in one run.

Both sides decode the same prompt token ids greedily with the stage's ``max_new_tokens`` and batch, in the
machine's best dtype (``model.dtype: auto``). Reports each side's seconds and useful tokens/s, and how
many completions agree token for token (greedy on both sides, so they differ only where rounding flips a
near tie). Writes bench/results/eval_speed.json; the last printed line is
``speedup=<HF seconds / ours>``.

    python bench/eval_speed.py [--quick] [--recipe default]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def eval_prompts(recipe, tokenizer, limit: int) -> tuple[list[list[int]], object]:
    """The first eval stage's prompt ids, as the stage builds them, and that stage's config."""
    from reasonloop.stages.rollout import prompts_for
    from reasonloop.tasks import load_task
    from reasonloop.tasks.prompt import encode_prompt

    stage = next(s for s in recipe.stages if s.kind == "eval")
    problems = load_task(recipe.task).test[:min(limit, stage.limit or limit)]
    texts = prompts_for(tokenizer, [p.question for p in problems], recipe.task)
    return [encode_prompt(tokenizer, t) for t in texts], stage


def run_ours(model, tokenizer, prompts, stage) -> tuple[list[list[int]], float]:
    from reasonloop.generate import make_engine
    from reasonloop.stages.rollout import sampling_params

    engine = make_engine(model, tokenizer, kind="torch", max_batch=stage.batch_size, progress=False)
    start = time.perf_counter()
    out = engine.generate(prompts, sampling_params(stage.decoding, 1, greedy=True))
    return [g[0].token_ids for g in out], time.perf_counter() - start


def run_peer(model, tokenizer, prompts, stage, eos) -> tuple[list[list[int]], float]:
    """HF generate in waves of the stage's batch, left-padded; completions cut after their first EOS."""
    from generate import run_hf  # bench/generate.py

    outputs: list[list[int]] = []
    settings = dict(do_sample=False, max_new_tokens=stage.decoding.max_new_tokens)
    _, _, seconds = run_hf(model, tokenizer, prompts, stage.batch_size, eos, settings, outputs)
    return outputs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--quick", action="store_true", help="the first 256 problems (< 5 min)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/eval_speed.json"))
    args = parser.parse_args()

    from apart import cpu_kind  # bench/apart.py
    from reasonloop.config import load_recipe
    from reasonloop.generate.bookkeeping import eos_ids
    from reasonloop.models import load_model

    recipe = load_recipe(args.recipe)
    model, tokenizer = load_model(recipe.model.path, dtype="auto", device="cpu")
    model.eval()
    eos = eos_ids(model, tokenizer)
    prompts, stage = eval_prompts(recipe, tokenizer, 256 if args.quick else 500)
    if stage.decoding.stop:
        raise SystemExit("eval_speed: the eval stage has stop strings, which HF generate would handle differently")
    ours, ours_s = run_ours(model, tokenizer, prompts, stage)
    peer, peer_s = run_peer(model, tokenizer, prompts, stage, eos)
    ours_tokens, peer_tokens = sum(map(len, ours)), sum(map(len, peer))
    agree = sum(a == b for a, b in zip(ours, peer)) / len(prompts)
    result = dict(recipe=args.recipe, problems=len(prompts), batch=stage.batch_size,
                  max_new_tokens=stage.decoding.max_new_tokens, dtype=str(next(model.parameters()).dtype),
                  cpu=cpu_kind(), threads=torch.get_num_threads(), quick=args.quick,
                  ours=dict(seconds=round(ours_s, 2), tokens=ours_tokens, tok_per_s=round(ours_tokens / ours_s, 1)),
                  hf_generate=dict(seconds=round(peer_s, 2), tokens=peer_tokens,
                                   tok_per_s=round(peer_tokens / peer_s, 1)),
                  same_completion=round(agree, 4), speedup=round(peer_s / ours_s, 2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'side':12s} {'seconds':>8s} {'tokens':>7s} {'tok/s':>7s}")
    for name in ("hf_generate", "ours"):
        row = result[name]
        print(f"{name:12s} {row['seconds']:8.1f} {row['tokens']:7d} {row['tok_per_s']:7.1f}")
    print(f"{len(prompts)} problems of recipe {args.recipe!r}, batch {stage.batch_size}, greedy, "
          f"{stage.decoding.max_new_tokens} new tokens, {result['dtype']}; {cpu_kind()}; "
          f"same completion: {100 * agree:.1f}%")
    print(f"speedup={result['speedup']}")


if __name__ == "__main__":
    main()
