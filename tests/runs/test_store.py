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


def _rows(path) -> int:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    finally:
        conn.close()


def test_sigkill_mid_write_leaves_a_readable_store(tmp_path):
    path = tmp_path / "s.sqlite"
    RunStore(path).close()
    proc = mp.get_context("spawn").Process(target=_writer, args=(path,))
    proc.start()
    # Kill once the writer is writing (a fixed sleep either wasted a second or, on a loaded machine, could
    # end before the spawned interpreter wrote anything), a moment into its stream of transactions.
    deadline = time.monotonic() + 60
    while _rows(path) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = conn.execute("SELECT step, COUNT(*) FROM metrics GROUP BY step").fetchall()
    assert counts and all(n == 50 for _, n in counts)  # whole transactions only


def test_full_disk_is_one_line_naming_the_store_and_keeps_earlier_rows(tmp_path):
    import pytest

    from reasonloop.errors import UserError

    s = RunStore(tmp_path / "s.sqlite")
    s.log_metrics("a", 1, {"loss": 1.0})
    # SQLite's own size cap raises the same SQLITE_FULL as a full disk
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(UserError) as err:
        s.add_samples("a", 2, [{"problem_id": f"p{i}", "completion": "x" * 4000} for i in range(50)])
    assert str(err.value).startswith(f"{tmp_path / 's.sqlite'}: could not write the run store (database or disk "
                                     "is full); the rows written before are kept")
    assert s.metrics("a", "loss") == [(1, 1.0)] and s.samples("a") == []  # the failed write left nothing half-done


def test_batch_is_one_transaction(tmp_path):
    s = RunStore(tmp_path / "s.sqlite")
    try:
        with s.batch():
            s.log_metrics("a", 1, {"loss": 1.0})
            s.set_meta("mark", True)
            raise KeyboardInterrupt  # a kill between the writes
    except KeyboardInterrupt:
        pass
    assert s.metrics("a", "loss") == [] and s.get_meta("mark") is None


def test_damaged_store_is_named(tmp_path):
    import pytest

    from reasonloop.errors import UserError

    path = tmp_path / "s.sqlite"
    RunStore(path).close()
    path.write_bytes(b"\x13" * 4096)
    with pytest.raises(UserError, match=r"s.sqlite: the run store is damaged \(file is not a database\); delete it"):
        RunStore(path)


def test_a_database_of_another_schema_is_named_as_damaged(tmp_path):
    """A valid SQLite file whose tables are not this version's (swapped in, another program's): one line,
    for the writer and for a read-only reader (report), not a traceback from the first query."""
    import sqlite3

    import pytest

    from reasonloop.errors import UserError

    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE stages(x); CREATE TABLE metrics(y);")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(UserError, match=r"s.sqlite: the run store is damaged \(table 'stages' has columns \['x'\]"):
            RunStore(path, readonly=readonly)
