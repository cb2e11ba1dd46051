"""`model.dtype` is the one source of the compute dtype, and `auto` is the only thing the CPU kind decides.

REASONLOOP_AUTO_DTYPE stands in for the CPU detection, so this machine can act as an AVX2-only machine
(auto -> fp32) or as an AVX512-BF16 / AMX one (auto -> bf16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from reasonloop.config import load_recipe
from reasonloop.errors import UserError
from reasonloop.models import AUTO_DTYPE_ENV, resolve_dtype
from reasonloop.pipeline import run_pipeline
from reasonloop.runs.store import RunStore


def test_auto_follows_the_override_and_explicit_names_ignore_it(monkeypatch):
    monkeypatch.setenv(AUTO_DTYPE_ENV, "bf16")
    assert resolve_dtype("auto") == torch.bfloat16 and resolve_dtype("fp32") == torch.float32
    monkeypatch.setenv(AUTO_DTYPE_ENV, "fp32")
    assert resolve_dtype("auto") == torch.float32 and resolve_dtype("bf16") == torch.bfloat16


def test_bad_override_is_named(monkeypatch):
    monkeypatch.setenv(AUTO_DTYPE_ENV, "fp16")
    with pytest.raises(UserError, match=r"^REASONLOOP_AUTO_DTYPE='fp16': expected bf16 or fp32 \(or unset it\)$"):
        resolve_dtype("auto")


def _toy_recipe(tmp_path, model_dir, dtype: str):
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "reasoning": f"{a} + {b} = {a + b}"}
            for a in range(1, 5) for b in range(1, 4)]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": {"path": str(model_dir), "dtype": dtype},
              "task": {"source": "jsonl", "train": str(data), "test": str(data), "fields": {"reasoning": "reasoning"}},
              "stages": [{"kind": "sft", "name": "sft", "max_steps": 2, "batch_tokens": 256, "optim": {"lr": 1e-2},
                          "eval_every": 1, "eval_limit": 3},  # the periodic evaluation builds an engine too
                         {"kind": "rl", "name": "grpo", "steps": 1, "prompts_per_step": 2, "group_size": 2,
                          "decoding": {"max_new_tokens": 6}, "optim": {"lr": 1e-3}},
                         {"kind": "eval", "name": "after", "limit": 3, "k": 2, "decoding": {"max_new_tokens": 6}}],
              "run": {"progress": False, "engine": "torch"}}
    path = tmp_path / f"recipe-{dtype}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def _outcome(run_dir) -> dict:
    """The training curves (loss, reward, periodic top-1) and the text of every evaluation sample."""
    store = RunStore(run_dir / "store.sqlite")
    try:
        metrics = {(s, k): store.metrics(s, k) for s in ("sft", "grpo") for k in ("loss", "reward_mean", "eval_top1")}
        samples = [(r["problem_id"], r["completion"]) for r in store.samples("after")]
        return {"metrics": metrics, "samples": samples}
    finally:
        store.close()


@pytest.mark.e2e
def test_fp32_recipe_is_fp32_on_a_bf16_capable_machine(tmp_path, tiny_model_dir, monkeypatch):
    # Training autocast and the torch engine both read model.dtype: `dtype: fp32` gives the same run,
    # to the last bit, whatever `auto` would pick; `dtype: auto` on the bf16 machine is a different run.
    runs = {}
    for label, dtype, auto in (("fp32-on-avx2", "fp32", "fp32"), ("fp32-on-bf16", "fp32", "bf16"),
                               ("auto-on-bf16", "auto", "bf16")):
        monkeypatch.setenv(AUTO_DTYPE_ENV, auto)
        run_pipeline(_toy_recipe(tmp_path, tiny_model_dir, dtype), tmp_path / label, progress=False)
        runs[label] = _outcome(tmp_path / label)
    assert len(runs["fp32-on-avx2"]["metrics"]["sft", "eval_top1"]) == 2
    assert runs["fp32-on-bf16"] == runs["fp32-on-avx2"]
    assert runs["auto-on-bf16"]["metrics"] != runs["fp32-on-avx2"]["metrics"]  # the override does switch auto


@pytest.mark.e2e
def test_bad_override_from_the_command_line(tmp_path, tiny_model_dir):
    data = tmp_path / "toy.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    env = {**os.environ, AUTO_DTYPE_ENV: "fp16"}
    out = subprocess.run([sys.executable, "-m", "reasonloop", "eval", "--model", str(tiny_model_dir), "--task",
                          str(data), "--k", "0", "--out", str(tmp_path / "run"), "--no-progress"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == \
        "error: REASONLOOP_AUTO_DTYPE='fp16': expected bf16 or fp32 (or unset it)"
    assert "Traceback" not in out.stderr
