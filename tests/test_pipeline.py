"""The pipeline end to end on a tiny model: stages chain, summary/report are written, a run killed at
several points and resumed ends like an uninterrupted one, and a changed recipe is refused."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reasonloop.config import load_recipe
from reasonloop.errors import UserError
from reasonloop.pipeline import run_pipeline
from report_check import assert_renders, find_browser

pytestmark = pytest.mark.e2e  # whole runs, kills and resumes: outside the inner test loop


def toy_task(tmp_path: Path) -> Path:
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "reasoning": f"{a} + {b} = {a + b}"}
            for a in range(1, 7) for b in range(1, 5)]
    f = tmp_path / "toy.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def tiny_recipe(tmp_path, model_dir, **over) -> Path:
    data = toy_task(tmp_path)
    recipe = {
        "model": {"path": str(model_dir)},
        "task": {"source": "jsonl", "train": str(data), "test": str(data),
                 "fields": {"reasoning": "reasoning"}},
        "stages": [
            {"kind": "eval", "name": "base", "limit": 8, "k": 2, "decoding": {"max_new_tokens": 8}},
            {"kind": "sft", "name": "sft", "epochs": 2, "batch_tokens": 256, "save_every": 1,
             "optim": {"lr": 1e-2}},
            {"kind": "eval", "name": "after_sft", "limit": 8, "k": 2, "decoding": {"max_new_tokens": 8}},
            {"kind": "rl", "name": "grpo", "steps": 3, "prompts_per_step": 2, "group_size": 2, "save_every": 1,
             "decoding": {"max_new_tokens": 8}, "optim": {"lr": 1e-3}, "eval_every": 2, "eval_limit": 4},
            {"kind": "eval", "name": "after_rl", "limit": 8, "k": 0, "decoding": {"max_new_tokens": 8}},
        ],
        "run": {"progress": False},
    }
    recipe.update(over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "reasonloop", *args], capture_output=True, text=True, **kw)


def test_pipeline_writes_summary_report_and_outputs(tmp_path, tiny_model_dir):
    recipe = load_recipe(tiny_recipe(tmp_path, tiny_model_dir, run={"progress": False,
                                                                    "ablation": ["after_sft", "after_rl"]}))
    summary = run_pipeline(recipe, tmp_path / "run", progress=False)
    assert list(summary["ablation"]) == ["after_sft", "after_rl"]
    assert set(summary["ablation"]["after_sft"]) == {"top1", "top1_ci95", "n", "mean_tokens"}  # the baseline
    vs = summary["ablation"]["after_rl"]["vs_first"]  # paired with the first arm on the same 8 problems
    assert vs["vs"] == "after_sft" and vs["n"] == 8 and vs["p_holm"] == vs["p_value"]  # one test: Holm = raw
    assert set(vs) >= {"delta", "delta_ci95", "wins", "losses", "tokens_delta", "tokens_delta_ci95"}
    names = [s["name"] for s in summary["stages"]]
    assert names == ["base", "sft", "after_sft", "grpo", "after_rl"]
    sft = summary["stages"][1]
    assert sft["kind"] == "sft" and sft["final_loss"] > 0 and sft["seconds"] > 0
    ev = sft["eval"]
    assert set(ev) >= {"top1", "top1_ci95", "n", "maj_k", "mean_tokens"} and len(ev["top1_ci95"]) == 2
    greedy_only = summary["stages"][3]["eval"]  # after_rl has k=0: maj_k is there, as null
    assert set(greedy_only) >= {"top1", "top1_ci95", "n", "maj_k", "mean_tokens"} and greedy_only["maj_k"] is None
    assert (tmp_path / "run" / "stages" / "grpo" / "model" / "config.json").is_file()
    from reasonloop.runs.store import RunStore

    curve = RunStore(tmp_path / "run" / "store.sqlite").metrics("grpo", "eval_top1")  # RL's learning curve
    assert [step for step, _ in curve] == [2] and 0.0 <= curve[0][1] <= 1.0
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "http://" not in html and "https://" not in html
    if find_browser():  # this real run's report as a person sees it (test_report_browser.py says when skipped)
        seen, _ = assert_renders(find_browser(), tmp_path / "run" / "report.html", tmp_path)
        assert len(seen["images"]) >= 6  # accuracy, lengths, sft curves; grpo: eval_top1, time per phase, curves
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["stages"][1]["optim"]["lr"] == 1e-2
    # completed stages are not redone
    before = [(s["started"], s["finished"]) for s in RunStore(tmp_path / "run" / "store.sqlite").stages()]
    again = run_pipeline(recipe, tmp_path / "run", progress=False)
    after = [(s["started"], s["finished"]) for s in RunStore(tmp_path / "run" / "store.sqlite").stages()]
    assert before == after and again["stages"] == summary["stages"]


def test_changed_recipe_is_refused(tmp_path, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir)
    recipe = load_recipe(path)
    recipe.stages = recipe.stages[:2]
    run_pipeline(recipe, tmp_path / "run", progress=False)
    changed = load_recipe(path, ["stages.1.optim.lr=0.5"])
    changed.stages = changed.stages[:2]
    with pytest.raises(UserError, match="recipe changed for stage 'sft'"):
        run_pipeline(changed, tmp_path / "run", progress=False)
    # adding stages at the end is fine
    longer = load_recipe(path)
    longer.stages = longer.stages[:3]
    run_pipeline(longer, tmp_path / "run", progress=False)


def _results(summary):
    return [(s["name"], s.get("final_loss"), (s.get("eval") or {}).get("top1")) for s in summary["stages"]]


def _metric_rows(store_path: Path, stage: str) -> int:
    """Logged steps of `stage` so far, read while another process writes the store (0 if not there yet)."""
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=1.0) as db:
            return db.execute("SELECT COUNT(DISTINCT step) FROM metrics WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_at_several_points_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir):
    """Kill the run three times inside different stages, resume each time. The kills wait for the run's
    own progress (steps logged in the store), not for wall time, so they land alike on any machine."""
    path = tiny_recipe(tmp_path, tiny_model_dir)
    straight = run_pipeline(load_recipe(path), tmp_path / "straight", progress=False)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "reasonloop", "run", str(path), "--out", str(out), "--no-progress"]
    statuses = []
    for stage, steps in (("sft", 1), ("grpo", 1), ("grpo", 2)):  # mid-SFT, mid-RL, later in RL
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and _metric_rows(out / "store.sqlite", stage) < steps and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        from reasonloop.runs.store import RunStore

        statuses.append([s["status"] for s in RunStore(out / "store.sqlite").stages()])  # readable after every kill
    # stages: base, sft, after_sft, grpo, after_rl; each kill landed inside the stage it waited for
    assert statuses[0][1] != "done" and statuses[1][3] != "done" and statuses[2][3] != "done", statuses
    done = run_cli(["run", str(path), "--out", str(out), "--no-progress"], env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in resumed["stages"]] == ["done"] * 5
    for (n1, l1, t1), (n2, l2, t2) in zip(_results(straight), _results(resumed)):
        assert n1 == n2 and t1 == t2 and (l1 == l2 or abs(l1 - l2) < 1e-4), (n1, l1, l2, t1, t2)


def test_missing_sink_package_is_named(tmp_path, tiny_model_dir):
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    recipe = load_recipe(tiny_recipe(tmp_path, tiny_model_dir, run={"report_to": ["wandb"]}))
    with pytest.raises(UserError, match="run.report_to: wandb needs `pip install wandb`"):
        run_pipeline(recipe, tmp_path / "run", progress=False)


@pytest.mark.parametrize("shown", [True, False])
def test_run_progress_setting_turns_bars_off(tmp_path, tiny_model_dir, capfd, shown):
    data = toy_task(tmp_path)
    from reasonloop.config import Recipe

    recipe = Recipe.model_validate({
        "model": {"path": str(tiny_model_dir)}, "run": {"progress": shown},
        "task": {"source": "jsonl", "train": str(data), "test": str(data)},
        "stages": [{"kind": "eval", "limit": 2, "k": 0, "decoding": {"max_new_tokens": 2}}]})
    capfd.readouterr()
    run_pipeline(recipe, tmp_path / "run", progress=True)
    assert ("%|" in capfd.readouterr().err) == shown  # tqdm's bar


def test_init_from_names_a_stage_output_base_or_a_path(tmp_path):
    from reasonloop.config import load_recipe
    from reasonloop.errors import UserError
    from reasonloop.pipeline import RunContext

    recipe = load_recipe(None, ["model.path=/models/sft"])
    ctx = RunContext(recipe=recipe, run_dir=tmp_path, store=None, current_model="/runs/a/model",
                     outputs={"sft": "/runs/a/sft"})
    assert ctx.resolve_model(None) == "/runs/a/model"
    assert ctx.resolve_model("sft") == "/runs/a/sft"
    assert ctx.resolve_model("base") == "/models/sft"  # the recipe's model.path: arms start from one model
    assert ctx.resolve_model("/elsewhere") == "/elsewhere"
    with pytest.raises(UserError, match="init_from: stage 'grpo' has not produced a model"):
        ctx.resolve_model("grpo")


def test_fingerprints_ignore_settings_left_at_their_defaults():
    # A newer reasonloop adds settings with defaults: a run folder it did not start must still resume.
    from reasonloop.config import load_recipe
    from reasonloop.pipeline import stage_fingerprints

    plain = stage_fingerprints(load_recipe(None))
    spelled_out = stage_fingerprints(load_recipe(None, ["stages.5.micro_batch_tokens=2048", "stages.0.compare_to=null"]))
    changed = stage_fingerprints(load_recipe(None, ["stages.5.micro_batch_tokens=1024"]))
    assert spelled_out == plain
    assert [changed[n] == plain[n] for n in plain] == [True] * 5 + [False] * 2  # grpo and the eval after it
