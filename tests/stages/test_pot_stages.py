"""Program-of-thought through the stages: gold programs from GSM8K annotations train SFT/RFT, and the
sandboxed program reward drives RL and judges RFT samples."""

import pytest
import json

import yaml

from reasonloop.config import load_recipe
from reasonloop.pipeline import run_pipeline

pytestmark = pytest.mark.e2e  # whole runs, kills and resumes: outside the inner test loop


def test_pot_task_runs_sft_rft_and_rl(tmp_path, tiny_model_dir, monkeypatch):
    rows = [{"question": f"Tom has {a} apples and buys {b}. How many now?",
             "answer": f"He has {a}+{b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
            for a in range(2, 6) for b in range(3, 5)]
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "task": {"source": "gsm8k", "train": str(data), "test": str(data), "answer_format": "program"},
        "stages": [
            {"kind": "sft", "name": "sft", "max_steps": 2, "batch_tokens": 512},
            {"kind": "rft", "name": "rft", "k": 2, "limit": 4, "decoding": {"max_new_tokens": 12},
             "train": {"max_steps": 1, "batch_tokens": 512}},
            {"kind": "rl", "name": "rl", "steps": 2, "prompts_per_step": 2, "group_size": 2,
             "reward": ["partial"], "decoding": {"max_new_tokens": 12}},
            {"kind": "eval", "name": "eval", "limit": 4, "k": 0, "decoding": {"max_new_tokens": 12}},
        ],
        "run": {"progress": False},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    import reasonloop.verify.pot as pot

    batches = []  # programs per sandbox call, recorded around the real sandbox

    def recording_run_programs(programs, **kw):
        batches.append(len(programs))
        return real_run_programs(programs, **kw)

    real_run_programs = pot.run_programs
    monkeypatch.setattr(pot, "run_programs", recording_run_programs)
    summary = run_pipeline(load_recipe(path), tmp_path / "run", progress=False)
    assert [s["status"] for s in summary["stages"]] == ["done"] * 4
    kept = (tmp_path / "run" / "stages" / "rft" / "round_0" / "kept.jsonl").read_text()
    assert "```python" in kept and "print(" in kept  # gold programs are what RFT trains on
    from reasonloop.runs.store import RunStore

    store = RunStore(tmp_path / "run" / "store.sqlite")
    assert store.metrics("rl", "reward_mean")
    # Every program ran once, in one parallel batch per judging call: RFT's 4 gold answers (one call
    # each), its 4 x 2 samples, 2 RL steps x 2 prompts x 2 rollouts (reward and accuracy share one
    # judgement), the eval's 4 greedy answers.
    assert sorted(batches) == [1, 1, 1, 1, 4, 4, 4, 8]
