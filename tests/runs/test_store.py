import multiprocessing as mp
import os
import signal
import sqlite3
import time

from reasonloop.runs.store import RunStore


def test_roundtrip(tmp_path):
    s = RunStore(tmp_path / "s.sqlite")
    s.start_stage("sft1", "sft", 1)
    s.log_metrics("sft1", 1, {"loss": 2.0, "lr": 1e-5})
    s.log_metrics("sft1", 2, {"loss": 1.5})
    s.add_samples("sft1", 2, [{"problem_id": "p1", "completion": "x", "correct": True, "tokens": 3}])
    s.set_problem_stats("rft", "pass_rate", {"p1": 0.25})
    s.add_stage_seconds("sft1", 3.0)
    s.add_stage_seconds("sft1", 2.0)
    s.finish_stage("sft1", {"final_loss": 1.5})
    assert s.metrics("sft1", "loss") == [(1, 2.0), (2, 1.5)]
    assert s.stage("sft1")["status"] == "done" and s.stage("sft1")["seconds"] == 5.0
    assert s.samples("sft1", correct=True)[0]["problem_id"] == "p1"
    assert s.problem_stats("pass_rate") == {"p1": 0.25}
    s.truncate_after("sft1", 1)
    assert s.metrics("sft1", "loss") == [(1, 2.0)]


def _writer(path):
    s = RunStore(path)
    step = 0
    while True:
        step += 1
        s.log_metrics("a", step, {f"k{i}": float(i) for i in range(50)})


def test_sigkill_mid_write_leaves_a_readable_store(tmp_path):
    path = tmp_path / "s.sqlite"
    RunStore(path).close()
    proc = mp.get_context("spawn").Process(target=_writer, args=(path,))
    proc.start()
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = conn.execute("SELECT step, COUNT(*) FROM metrics GROUP BY step").fetchall()
    assert counts and all(n == 50 for _, n in counts)  # whole transactions only
