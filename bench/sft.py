"""SFT throughput: TRL SFTTrainer against reasonloop's SFT stage on the same examples, in one run.

The default model, the same GSM8K training examples (chat prompt + gold solution, loss on the
solution only), the same sequence budget (max length 256) and the same number of examples per
optimizer step. Reports train tokens/s (non-padding tokens) and model FLOPs utilisation against the
matmul peak measured in the same run, and the peak resident memory of each side (each runs in its own
process: bench/apart.py). Neither side recomputes activations (TRL's default does; ours is off by
default), so both do the same work and keep the same activations. Writes bench/results/sft.json; the last line is ratio=<ours/TRL>.

    python bench/sft.py            # 256 examples
    python bench/sft.py --quick    # 32 examples, under 5 minutes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reasonloop.config import SftStage, TaskConfig
from reasonloop.models import load_model
from reasonloop.stages.sft import SftTrainer
from reasonloop.stages.sft_data import examples_from_pairs, gold_pairs
from reasonloop.tasks import load_task

from apart import best_dtype, cpu_kind, run_apart  # bench/apart.py: one side per fresh process, with its peak memory
from generate import matmul_peak  # bench/generate.py: best-of-N square matmul, GFLOP/s

ROOT = Path(__file__).resolve().parents[1]


def run_trl(pairs, batch, max_length, bf16: bool, packing: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = load_model("default", dtype="fp32", trainable=True)
    ds = Dataset.from_list([{"prompt": p, "completion": r} for _, p, r in pairs])
    cfg = SFTConfig(output_dir="/tmp/rl_bench_trl", per_device_train_batch_size=batch, num_train_epochs=1,
                    max_length=max_length, learning_rate=1e-5, logging_steps=1000, save_strategy="no",
                    report_to=[], bf16=bf16, use_cpu=True, packing=packing, completion_only_loss=True,
                    dataloader_num_workers=0, disable_tqdm=True, seed=0,
                    activation_checkpointing=False)  # TRL's default recomputes layers; neither side does here
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    tokens = sum(min(len(x["input_ids"]), max_length) for x in trainer.train_dataset)
    t = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t
    return {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs}


def run_ours(examples, batch_tokens, grad_accum, dtype: str) -> dict:
    model, tok = load_model("default", dtype="fp32", trainable=True)
    cfg = SftStage(kind="sft", epochs=1, batch_tokens=batch_tokens, grad_accum=grad_accum, max_length=256,
                   optim={"lr": 1e-5}, save_every=10_000)
    tokens = sum(len(e.ids) for e in examples)
    t = time.perf_counter()
    SftTrainer(model, tok, examples, cfg, dtype=dtype).train(progress=False)
    secs = time.perf_counter() - t
    return {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench/results/sft.json"))
    args = ap.parse_args()
    n = args.examples or (32 if args.quick else 256)
    _, tok = load_model("default")
    pairs = gold_pairs(tok, load_task(TaskConfig()).train[:n], TaskConfig())
    examples = examples_from_pairs(tok, pairs, 256)
    params = 134.5e6
    peak32 = matmul_peak(torch.float32, 2048, 5) * 1e9
    peak16 = matmul_peak(torch.bfloat16, 1024, 2) * 1e9
    dtype = best_dtype()  # both sides: fp32 weights, bf16 autocast where this CPU has fast bf16
    peak = peak16 if dtype == "bf16" else peak32
    rows = {}
    ours_name = f"reasonloop {dtype} (8 ex/step, packed)"
    mean_len = sum(len(e.ids) for e in examples) / len(examples)
    rows[ours_name] = run_apart(run_ours, examples, int(mean_len * 8) + 1, 1, dtype)
    rows[f"trl {dtype} (batch 8)"] = run_apart(run_trl, pairs, 8, 256, dtype == "bf16", False)
    if not args.quick:
        rows[f"trl {dtype} packing (batch 8)"] = run_apart(run_trl, pairs, 8, 256, dtype == "bf16", True)
    print(f"\nSFT on {len(examples)} GSM8K examples, mean {mean_len:.0f} tokens; matmul peak fp32 "
          f"{peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s; both sides {dtype}; {cpu_kind()}")
    print(f"{'run':<40}{'seconds':>9}{'tokens/s':>10}{'MFU ' + dtype:>10}{'peak MB':>9}")
    for name, r in rows.items():
        r["mfu"] = 6 * params * r["tokens_per_s"] / peak  # 6 FLOPs per parameter per trained token
        print(f"{name:<40}{r['seconds']:>9.1f}{r['tokens_per_s']:>10.1f}{r['mfu']:>10.1%}"
              f"{r.get('peak_rss_mb', float('nan')):>9.0f}")
    trl_best = max(v["tokens_per_s"] for k, v in rows.items() if k.startswith("trl"))
    ours = rows[ours_name]["tokens_per_s"]
    trl_mem = min(v["peak_rss_mb"] for k, v in rows.items() if k.startswith("trl"))
    memory_ratio = rows[ours_name]["peak_rss_mb"] / trl_mem  # < 1: we use less
    print(f"peak resident memory, ours / TRL's smallest: {memory_ratio:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu_kind(), "dtype": dtype, "examples": len(examples), "peak_fp32": peak32,
                                          "peak_bf16": peak16,
                                          "runs": rows, "ratio": ours / trl_best, "memory_ratio": memory_ratio},
                                         indent=2))
    print(f"ratio={ours / trl_best:.2f}")


if __name__ == "__main__":
    main()
