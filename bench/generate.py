"""Benchmark: Hugging Face `generate` (TRL's path without vLLM) vs reasonloop's torch engine.

GSM8K test questions through the chat template, the same sampling settings on both sides, batch 1, 16
and 64, 128 new tokens. Reports useful tokens/s (tokens up to and including each sequence's EOS) and
each side's share of this machine's matmul peak counting every token it ran through the model (prompt
tokens prefilled, padding included, and every decode step of every row, finished or not), with the peak
measured in the same run. Both sides run in the machine's best dtype (`model.dtype: auto`). Writes bench/results/generate.json;
the last printed line is ``ratio=<ours/HF at batch 64>``.

    python bench/generate.py [--quick] [--data ../shared/data/gsm8k/test.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(temperature=0.7, top_p=1.0, max_new_tokens=128)


def matmul_peak(dtype: torch.dtype, size: int, reps: int) -> float:
    """Best-of-``reps`` GFLOP/s of a square matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def flops_per_token(model) -> float:
    """2 x the weights of every matmul a decoded token goes through (all linears incl. the LM head)."""
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def load_prompts(path: Path, tokenizer, count: int) -> list[list[int]]:
    questions = [json.loads(line)["question"] for line in path.open() if line.strip()][:count]
    out = []
    for q in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def useful(tokens: list[int], eos: set[int]) -> int:
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1
    return len(tokens)


def run_hf(model, tokenizer, prompts, batch: int, eos: set[int], settings: dict | None = None,
           completions: list | None = None) -> tuple[int, int, float]:
    """(useful tokens, tokens run through the model, seconds). ``settings``: `generate` arguments (default:
    sampling at SETTINGS); ``completions``, if given, receives each completion's ids up to its first EOS."""
    settings = settings or dict(do_sample=True, top_k=0, **SETTINGS)
    pad = tokenizer.pad_token_id
    total, processed, start = 0, 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad)  # [B, T], left-padded as HF batched generate expects
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **settings)
        rows = out[:, width:].tolist()
        total += sum(useful(row, eos) for row in rows)
        if completions is not None:
            completions.extend(row[:useful(row, eos)] for row in rows)
        processed += out.numel() - len(chunk)  # padded prompts, then every row at every step until all stop
    return total, processed, time.perf_counter() - start


def run_ours(model, tokenizer, prompts, batch: int) -> tuple[int, int, float]:
    """(useful tokens, tokens run through the model, seconds). A shared prompt prefix is prefilled once
    (counted once per prompt here: an upper bound), a finished row leaves the batch at once."""
    from reasonloop.generate import SamplingParams, make_engine

    engine = make_engine(model, tokenizer, kind="torch", max_batch=batch, progress=False)
    start = time.perf_counter()
    out = engine.generate(prompts, SamplingParams(seed=0, **SETTINGS))
    seconds = time.perf_counter() - start
    generated = sum(len(s.token_ids) for group in out for s in group)
    return generated, sum(map(len, prompts)) + generated - len(prompts), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "../shared/data/gsm8k/test.jsonl"))
    parser.add_argument("--quick", action="store_true", help="fewer prompts per batch size (< 5 min)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/generate.json"))
    args = parser.parse_args()

    from apart import cpu_kind  # bench/apart.py
    from reasonloop.generate.bookkeeping import eos_ids
    from reasonloop.models import load_model, resolve_dtype

    dtype = resolve_dtype("auto")
    model, tokenizer = load_model("default", dtype="auto", device="cpu")
    model.eval()
    eos = eos_ids(model, tokenizer)
    counts = {1: 2, 16: 16, 64: 64} if args.quick else {1: 4, 16: 32, 64: 128}
    prompts = load_prompts(Path(args.data), tokenizer, max(counts.values()))
    peak = {"fp32": matmul_peak(torch.float32, 2048, 5), "bf16": matmul_peak(torch.bfloat16, 512, 3)}
    peak_key = "bf16" if dtype == torch.bfloat16 else "fp32"
    fpt = flops_per_token(model)

    rows = []
    for batch, count in counts.items():
        for name, fn in (("hf_generate", lambda b, p: run_hf(model, tokenizer, p, b, eos)),
                         ("reasonloop", lambda b, p: run_ours(model, tokenizer, p, b))):
            tokens, processed, seconds = fn(batch, prompts[:count])
            rate = tokens / seconds
            rows.append(dict(engine=name, batch=batch, prompts=count, useful_tokens=tokens,
                             processed_tokens=processed, seconds=round(seconds, 2), tok_per_s=round(rate, 1),
                             peak_share=round(processed / seconds * fpt / 1e9 / peak[peak_key], 4)))
            print(f"{name:12s} B={batch:3d} prompts={count:4d} tokens={tokens:6d} "
                  f"{seconds:7.1f}s {rate:7.1f} tok/s  {100 * rows[-1]['peak_share']:.1f}% of "
                  f"{peak_key} peak", flush=True)
    rate = {(r["engine"], r["batch"]): r["tok_per_s"] for r in rows}
    ratios = {b: round(rate["reasonloop", b] / rate["hf_generate", b], 2) for b in counts}
    result = dict(model="SmolLM2-135M-Instruct", dtype=str(dtype).removeprefix("torch."),
                  settings=SETTINGS, quick=args.quick, threads=torch.get_num_threads(),
                  cpu=cpu_kind(), peak_gflops=peak,
                  flops_per_token=fpt, rows=rows, ratio_by_batch=ratios)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak GFLOP/s: fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f}; both engines in {result['dtype']}; "
          f"{cpu_kind()}")
    print(f"ratio={ratios[64]}")


if __name__ == "__main__":
    main()
