"""Warm-up: in a fresh process the first generate of a short evaluation costs at most 1.2x the same call
repeated (the engine issue's target). On CPUs with bf16 units, oneDNN builds kernels per matmul shape on
first use; a continuous-batching engine meets many shapes, so this is measured, in the machine's best dtype,
on the real model in a fresh interpreter (a warm test process would hide exactly what is measured)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, time
from reasonloop.config import TaskConfig
from reasonloop.generate import SamplingParams, make_engine
from reasonloop.models import load_model
from reasonloop.tasks import load_task
from reasonloop.tasks.prompt import encode_prompt, prompt_text

model, tok = load_model("default", dtype="auto")
cfg = TaskConfig()
prompts = [encode_prompt(tok, prompt_text(tok, p.question, cfg.prompt, cfg.answer_format))
           for p in load_task(cfg).test[:32]]
engine = make_engine(model, tok, kind="torch", max_batch=32, dtype="auto", progress=False)
seconds = []
for _ in range(3):
    t = time.perf_counter()
    engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=48))
    seconds.append(time.perf_counter() - t)
print(json.dumps(seconds))
"""


@pytest.mark.slow  # the real model, three calls of 32 prompts x 48 tokens: ~1 min on a 2-core AVX2 CPU
def test_first_generate_in_a_fresh_process_costs_at_most_1_2x_a_repeat():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    first, *repeats = json.loads(out.stdout.strip().splitlines()[-1])
    assert first <= 1.2 * min(repeats), f"first call {first:.1f} s, repeats {repeats}"
