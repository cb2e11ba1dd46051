"""The run folder under stress: two runs at once, kills at the worst moments, damage between runs, moved
folders, deleted outputs, a full disk. Each case ends in a correct run or in one line that says what to
do, and never loses what was already written."""

import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from reasonloop.cli import main
from reasonloop.config import load_recipe
from reasonloop.pipeline import run_pipeline

pytestmark = pytest.mark.e2e  # whole runs, kills and resumes: outside the inner test loop

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def write_recipe(tmp_path: Path, model_dir, stages: list[dict], name="recipe.yaml", **model) -> Path:
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "reasoning": f"{a} + {b} = {a + b}"}
            for a in range(1, 7) for b in range(1, 5)]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": {"path": str(model_dir), **model},
              "task": {"source": "jsonl", "train": str(data), "test": str(data), "fields": {"reasoning": "reasoning"}},
              "stages": stages, "run": {"progress": False}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


SFT = {"kind": "sft", "name": "sft", "epochs": 1, "batch_tokens": 256, "save_every": 1, "optim": {"lr": 1e-2}}
EVAL = {"kind": "eval", "name": "eval", "limit": 2, "k": 0, "decoding": {"max_new_tokens": 4}}
RL = {"kind": "rl", "name": "rl", "steps": 3, "prompts_per_step": 2, "group_size": 2, "save_every": 1000,
      "decoding": {"max_new_tokens": 6}, "optim": {"lr": 1e-3}}


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def metric_rows(run: Path) -> dict[tuple, int]:
    db = sqlite3.connect(run / "store.sqlite")
    try:
        return {(s, k, n): c for s, k, n, c in
                db.execute("SELECT stage, key, step, COUNT(*) FROM metrics GROUP BY stage, key, step")}
    finally:
        db.close()


def hidden_leftovers(run: Path) -> list[Path]:
    return [p for p in (run / "stages").rglob(".*")] + list(run.rglob("*.tmp"))


# ----------------------------------------------------------------------------- one process per folder

def test_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom reasonloop.runs.lock import RunLock\n"
                               f"RunLock({str(out)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe = write_recipe(tmp_path, tiny_model_dir, [EVAL])
        code, line = cli(capsys, "run", recipe, "--out", out, "--no-progress")
        assert code == 2 and f"{out}: run folder in use by pid {holder.pid} on {socket.gethostname()} since" in line
        assert not (out / "store.sqlite").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS drops a killed holder's lock: no stale lock to clear
        holder.wait()
    code, line = cli(capsys, "run", recipe, "--out", out, "--no-progress")
    assert code == 0, line


def test_two_runs_started_together_one_runs_the_other_is_refused(tmp_path, tiny_real_vocab_model_dir):
    # The 49k-vocabulary model keeps the first run busy for seconds: with the 512-token test vocabulary it
    # could finish before the second process had imported torch, and the second then resumed a done run.
    recipe = write_recipe(tmp_path, tiny_real_vocab_model_dir, [SFT, EVAL])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "reasonloop", "run", str(recipe), "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "run folder in use by pid" in refused.strip().splitlines()[-1] and "Traceback" not in refused
    assert set(metric_rows(out).values()) == {1}  # no metric row written twice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][0]["final_loss"] is not None


# ----------------------------------------------------------------------------- kills

def _run_until(cmd, condition, what: str) -> None:
    """Start the run, SIGKILL it the moment `condition()` holds (polled every millisecond: writing the
    tiny model's folder takes tens of milliseconds)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and not condition() and time.time() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, f"the run ended before {what}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _temp_model_dir(stage_dir: Path) -> bool:
    try:
        return any(e.name.startswith(".model.") for e in os.scandir(stage_dir))
    except FileNotFoundError:
        return False


def _logged_steps(run: Path, stage: str) -> int:
    try:
        with sqlite3.connect(f"file:{run / 'store.sqlite'}?mode=ro", uri=True, timeout=1.0) as db:
            return db.execute("SELECT COUNT(DISTINCT step) FROM metrics WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kills_before_the_first_checkpoint_and_while_writing_models_then_resume(tmp_path, tiny_model_dir):
    """Three kills: mid-SFT before any checkpoint, while SFT's final model is written, while RL's is.
    The resumed run reports the final loss and reward, logged each step once, and left no temp folders."""
    sft = {**SFT, "epochs": 3, "batch_tokens": 96, "save_every": 1000}  # no checkpoint before the last step
    recipe = write_recipe(tmp_path, tiny_model_dir, [sft, RL])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "reasonloop", "run", str(recipe), "--out", str(out), "--no-progress"]

    _run_until(cmd, lambda: _logged_steps(out, "sft") >= 3, "SFT logged 3 steps")
    assert not (out / "stages/sft/checkpoint").exists()
    _run_until(cmd, lambda: _temp_model_dir(out / "stages/sft"), "SFT wrote its model")
    assert hidden_leftovers(out)  # the kill landed mid-write
    _run_until(cmd, lambda: _temp_model_dir(out / "stages/rl"), "RL wrote its model")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    summary = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}
    with sqlite3.connect(out / "store.sqlite") as db:  # each stage's own last row (RL logs a `loss` too)
        def logged(stage: str, step: int, key: str) -> float:
            return db.execute("SELECT value FROM metrics WHERE stage = ? AND step = ? AND key = ?",
                              (stage, step, key)).fetchone()[0]

        sft_loss, rl_reward = logged("sft", summary["sft"]["steps"], "loss"), logged("rl", 3, "reward_mean")
    assert summary["sft"]["final_loss"] == pytest.approx(sft_loss)
    assert summary["rl"]["final_reward"] == pytest.approx(rl_reward)
    assert set(metric_rows(out).values()) == {1}
    assert not hidden_leftovers(out)


# ----------------------------------------------------------------------------- damage between runs

@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_damaged_store_is_named_and_deleting_it_recovers(damage, tmp_path, capsys, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, [SFT, EVAL])
    out = tmp_path / "run"
    assert cli(capsys, "run", recipe, "--out", out, "--no-progress")[0] == 0
    before = json.loads((out / "summary.json").read_text())["stages"]
    store = out / "store.sqlite"
    raw = store.read_bytes()
    store.write_bytes(b"\x13" * 100 + raw[100:] if damage == "header" else raw[: len(raw) // 2])
    for argv in (["run", recipe, "--out", out, "--no-progress"], ["report", out]):
        code, line = cli(capsys, *argv)
        assert code == 2 and line.startswith(f"error: {store}: the run store is damaged") and "delete it" in line
    store.unlink()  # what the message says to do
    assert cli(capsys, "run", recipe, "--out", out, "--no-progress")[0] == 0
    after = json.loads((out / "summary.json").read_text())["stages"]
    assert after[0]["final_loss"] == before[0]["final_loss"]  # SFT came back from its last checkpoint
    assert after[1]["eval"]["top1"] == before[1]["eval"]["top1"]


def _sft_checkpoint(tmp_path, tokenizer, tiny_model_dir, **cfg):
    """Train 2 SFT steps with a checkpoint per step; return (ckpt_dir, train function, first result)."""
    from reasonloop.config import SftStage
    from reasonloop.models import load_model
    from reasonloop.stages.sft import SftTrainer
    from reasonloop.stages.sft_data import examples_from_pairs

    pairs = [(f"p{i}", f"What is {i} + {i}?\n", f"{2 * i}") for i in range(8)]
    examples = examples_from_pairs(tokenizer, pairs, max_length=64)
    stage = SftStage(kind="sft", max_steps=2, batch_tokens=64, save_every=1, **cfg)
    ckpt = tmp_path / "checkpoint"

    def train():
        model, _ = load_model(str(tiny_model_dir), trainable=True)
        return SftTrainer(model, tokenizer, examples, stage, ckpt_dir=ckpt).train(progress=False)

    return ckpt, train, train()


def test_damaged_checkpoint_falls_back_to_the_previous_one_or_names_what_to_delete(tmp_path, tokenizer,
                                                                                  tiny_model_dir):
    from reasonloop.errors import UserError

    ckpt, train, first = _sft_checkpoint(tmp_path, tokenizer, tiny_model_dir)
    old = ckpt.with_name("checkpoint.old")
    shutil.copytree(ckpt, old)  # a previous checkpoint, as a kill between save_checkpoint's renames leaves one
    (ckpt / "trainer_state.pt").write_bytes((ckpt / "trainer_state.pt").read_bytes()[:1000])
    assert train()["final_loss"] == first["final_loss"]  # resumed from checkpoint.old at the last step
    shutil.rmtree(old)
    with pytest.raises(UserError) as err:
        train()
    msg = str(err.value)
    assert msg.startswith(f"{ckpt}: damaged checkpoint: trainer_state.pt is unreadable") and \
        msg.endswith(f"delete {ckpt} to restart this stage from its first step") and "\n" not in msg
    shutil.rmtree(ckpt)
    ckpt, train, _ = _sft_checkpoint(tmp_path, tokenizer, tiny_model_dir)
    weights = ckpt / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"damaged checkpoint: model/model.safetensors is unreadable"):
        train()


class _RunsCode:
    """Unpickling this runs code: what a tampered trainer_state.pt could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_checkpoint_that_would_run_code_is_refused(tmp_path, tokenizer, tiny_model_dir):
    from reasonloop.errors import UserError

    ckpt, train, _ = _sft_checkpoint(tmp_path, tokenizer, tiny_model_dir)
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _RunsCode(marker)}, ckpt / "trainer_state.pt")
    with pytest.raises(UserError) as err:
        train()
    assert "trainer_state.pt holds objects other than tensors and plain data" in str(err.value)
    assert "refused" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- paths, replanning, rebuilding

def test_moved_run_folder_resumes_and_reports_from_another_directory(tmp_path, capsys, monkeypatch, tiny_model_dir):
    (tmp_path / "first").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "other").mkdir()
    recipe = write_recipe(tmp_path, tiny_model_dir, [SFT])
    monkeypatch.chdir(tmp_path / "first")
    assert cli(capsys, "run", recipe, "--out", "run", "--no-progress")[0] == 0  # a relative --out
    shutil.move(tmp_path / "first" / "run", tmp_path / "elsewhere" / "moved")
    monkeypatch.chdir(tmp_path / "other")
    longer = write_recipe(tmp_path, tiny_model_dir, [SFT, EVAL], name="longer.yaml")  # eval reads sft's model
    moved = tmp_path / "elsewhere" / "moved"
    code, line = cli(capsys, "run", longer, "--out", moved, "--no-progress")
    assert code == 0, line
    summary = json.loads((moved / "summary.json").read_text())
    assert summary["stages"][1]["evaluated_model"] == "stages/sft/model"  # stored relative to the run folder
    assert cli(capsys, "report", moved)[0] == 0


def test_stage_that_failed_before_doing_work_can_be_corrected_in_the_same_folder(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "run"
    bad = write_recipe(tmp_path, tiny_model_dir, [{**EVAL, "init_from": str(tmp_path / "no-such-model")}])
    code, line = cli(capsys, "run", bad, "--out", out, "--no-progress")
    assert code == 2 and "no-such-model: model not found" in line
    fixed = write_recipe(tmp_path, tiny_model_dir, [EVAL])
    code, line = cli(capsys, "run", fixed, "--out", out, "--no-progress")
    assert code == 0, line
    # a stage that did work (a checkpoint) still refuses a changed recipe
    assert cli(capsys, "run", write_recipe(tmp_path, tiny_model_dir, [EVAL, SFT]), "--out", out, "--no-progress")[0] == 0
    changed = write_recipe(tmp_path, tiny_model_dir, [EVAL, {**SFT, "optim": {"lr": 0.5}}])
    code, line = cli(capsys, "run", changed, "--out", out, "--no-progress")
    assert code == 2 and "the recipe changed for stage 'sft'" in line


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_deleted_model_folder_of_a_finished_stage_is_rebuilt(lora, tmp_path, capsys, tiny_model_dir):
    model = {"lora": lora} if lora else {}
    recipe = write_recipe(tmp_path, tiny_model_dir, [SFT, EVAL], **model)
    out = tmp_path / "run"
    assert cli(capsys, "run", recipe, "--out", out, "--no-progress")[0] == 0
    before = json.loads((out / "summary.json").read_text())["stages"]
    weights = load_file(str(out / "stages/sft/model/model.safetensors"))
    shutil.rmtree(out / "stages/sft/model")
    assert cli(capsys, "run", recipe, "--out", out, "--no-progress")[0] == 0
    rebuilt = load_file(str(out / "stages/sft/model/model.safetensors"))
    assert rebuilt.keys() == weights.keys() and all(torch.equal(rebuilt[k], weights[k]) for k in weights)
    after = json.loads((out / "summary.json").read_text())["stages"]
    assert after[0]["final_loss"] == before[0]["final_loss"] and after[1]["eval"] == before[1]["eval"]
    assert set(metric_rows(out).values()) == {1}


# ----------------------------------------------------------------------------- disk full

def test_disk_full_while_checkpointing_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, [SFT])
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    code, line = cli(capsys, "run", recipe, "--out", out, "--no-progress")
    ckpt = out / "stages/sft/checkpoint"
    assert code == 2 and line == (f"error: {ckpt}: could not write the checkpoint (No space left on device); the "
                                  "previous checkpoint is kept. Free disk space if it is full, then run the same "
                                  "command to resume")
    from reasonloop.checkpoint import read_checkpoint

    assert read_checkpoint(ckpt).state["step"] == 1 and not hidden_leftovers(out)
    assert {step for _, key, step in metric_rows(out) if key == "loss"} >= {1}
    monkeypatch.setattr(torch, "save", real_save)
    assert cli(capsys, "run", recipe, "--out", out, "--no-progress")[0] == 0
    assert set(metric_rows(out).values()) == {1}


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                              capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


def test_disk_full_on_a_real_small_filesystem(tmp_path, tiny_real_vocab_model_dir):
    """A 64 MiB tmpfs holds the first checkpoint (~42 MB with optimizer state, with the real 49k vocabulary)
    but not a second one."""
    tiny_model_dir = tiny_real_vocab_model_dir
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, 64):
        pytest.skip("mounting a tmpfs needs root")
    try:
        recipe = write_recipe(tmp_path, tiny_model_dir, [SFT])
        out = disk / "run"
        done = subprocess.run([sys.executable, "-m", "reasonloop", "run", str(recipe), "--out", str(out),
                               "--no-progress"], env=ENV, capture_output=True, text=True)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert last.startswith(f"error: {out}/stages/sft/") and "no space left on device" in last.lower(), last
        from reasonloop.checkpoint import read_checkpoint

        assert read_checkpoint(out / "stages/sft/checkpoint").state["step"] >= 1  # the earlier one is whole
        db = sqlite3.connect(out / "store.sqlite")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT COUNT(*) FROM metrics WHERE stage = 'sft'").fetchone()[0] > 0
        finally:
            db.close()
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=False)  # detach even if a file is still open
