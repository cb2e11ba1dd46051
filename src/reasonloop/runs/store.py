"""The run store: one SQLite file per run with metrics, samples, stage status and per-problem stats.

Every write is one transaction (WAL journal), so a process killed at any moment leaves a readable
store holding everything committed before the kill.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from reasonloop.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
  name TEXT PRIMARY KEY, kind TEXT, status TEXT, started REAL, finished REAL,
  seconds REAL DEFAULT 0, result TEXT, position INTEGER);
CREATE TABLE IF NOT EXISTS metrics (
  stage TEXT, step INTEGER, key TEXT, value REAL, time REAL);
CREATE INDEX IF NOT EXISTS metrics_stage ON metrics(stage, key, step);
CREATE TABLE IF NOT EXISTS samples (
  stage TEXT, step INTEGER, problem_id TEXT, prompt TEXT, completion TEXT, answer TEXT,
  gold TEXT, reward REAL, correct INTEGER, tokens INTEGER, meta TEXT);
CREATE INDEX IF NOT EXISTS samples_stage ON samples(stage, step);
CREATE TABLE IF NOT EXISTS problem_stats (
  problem_id TEXT, key TEXT, value REAL, stage TEXT, PRIMARY KEY (problem_id, key, stage));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@lru_cache(maxsize=1)
def _expected_columns() -> dict[str, list[str]]:
    """Each table's columns as SCHEMA creates them."""
    mem = sqlite3.connect(":memory:")
    mem.executescript(SCHEMA)
    tables = [name for (name,) in mem.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = {t: [row[1] for row in mem.execute(f"PRAGMA table_info({t})")] for t in tables}
    mem.close()
    return columns


def _check_tables(conn) -> None:
    """A store whose tables are not this version's (another program's file, a swapped-in database)
    is damage to report, not a traceback from the first query that reads a missing column."""
    for table, expected in _expected_columns().items():
        found = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if found and found != expected:
            raise sqlite3.DatabaseError(f"table {table!r} has columns {found}, expected {expected}")


class RunStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        """`readonly`: what ranks other than 0 of a distributed run hold. Reads work; writes are dropped,
        because rank 0 writes the same rows (one writer, no duplicate metrics)."""
        self.path = Path(path)
        self.readonly = readonly
        self.sinks: list = []  # runs/sinks.py: TensorBoard / W&B / MLflow get every metric row too
        self._in_batch = False
        if readonly:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            try:
                with self._errors():
                    _check_tables(self.conn)
            except UserError:
                self.conn.close()
                raise
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            with self._errors():
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                _check_tables(self.conn)  # before SCHEMA, whose indexes would fail on foreign tables
                self.conn.executescript(SCHEMA)
                # Damage found now is one clear message; found mid-run it would stop a stage halfway.
                problem = self.conn.execute("PRAGMA quick_check(1)").fetchone()[0]
                if problem != "ok":
                    raise sqlite3.DatabaseError(problem)
        except UserError:
            self.conn.close()
            raise

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.conn.close()

    @contextmanager
    def _errors(self):
        """SQLite failures a user can act on become one line naming the store file."""
        try:
            yield
        except sqlite3.OperationalError as err:
            if "full" not in str(err) and "disk I/O" not in str(err):
                raise
            raise UserError(f"{self.path}: could not write the run store ({err}); the rows written before "
                            "are kept. Free disk space if it is full, then run the same command to resume") from None
        except sqlite3.DatabaseError as err:
            why = " ".join(str(err).split())  # integrity reports span lines
            raise UserError(f"{self.path}: the run store is damaged ({why}); delete it to rebuild it (stages "
                            "resume from their checkpoints, evaluations run again) or use another --out") from None

    @contextmanager
    def batch(self):
        """Writes inside this block form one transaction: after a kill the store has all of them or none."""
        if self.readonly or self._in_batch:
            yield
            return
        self._in_batch = True
        try:
            with self._errors(), self.conn:
                self.conn.execute("BEGIN")
                yield
        finally:
            self._in_batch = False

    def _tx(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> None:
        if self.readonly:
            return
        with self.batch():  # one transaction: all rows or none
            if isinstance(rows, tuple):
                self.conn.execute(sql, rows)
            else:
                self.conn.executemany(sql, rows)

    # ----------------------------------------------------------------- meta
    def set_meta(self, key: str, value: Any) -> None:
        self._tx("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ----------------------------------------------------------------- stages
    def start_stage(self, name: str, kind: str, position: int) -> None:
        row = self.stage(name)
        if row is None:
            self._tx("INSERT INTO stages (name, kind, status, started, position) VALUES (?, ?, 'running', ?, ?)",
                     (name, kind, time.time(), position))
        elif row["status"] != "done":
            self._tx("UPDATE stages SET status = 'running', started = ? WHERE name = ?", (time.time(), name))

    def reopen_stage(self, name: str) -> None:
        """A finished stage runs again (its output was deleted): it counts as unfinished until it ends."""
        self._tx("UPDATE stages SET status = 'running', started = ? WHERE name = ?", (time.time(), name))

    def forget_stage(self, name: str) -> None:
        """Drop every row of a stage, so it can be planned afresh (it failed before producing anything)."""
        with self.batch():
            for table in ("metrics", "samples", "problem_stats"):
                self.conn.execute(f"DELETE FROM {table} WHERE stage = ?", (name,))
            self.conn.execute("DELETE FROM stages WHERE name = ?", (name,))
            mark = f"stage:{name}:"  # per-stage marks in meta (e.g. an RFT round's rows are stored)
            self.conn.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ?", (len(mark), mark))

    def add_stage_seconds(self, name: str, seconds: float) -> None:
        """Time spent is accumulated over resumed attempts, so a resumed stage reports its total."""
        self._tx("UPDATE stages SET seconds = seconds + ? WHERE name = ?", (seconds, name))

    def record_stage_memory(self, name: str, values: dict) -> None:
        """Memory numbers of one attempt at a stage (memory.peak()); over resumed attempts the largest is kept,
        since the stage needed that much. Non-numeric values (the kind of measurement) are the latest."""
        old = self.stage_memory(name)
        merged = {**old, **values}
        for key, value in values.items():
            if key.startswith("peak_") and isinstance(value, (int, float)) and isinstance(old.get(key), (int, float)):
                merged[key] = max(value, old[key])
        self.set_meta(f"stage:{name}:memory", merged)

    def stage_memory(self, name: str) -> dict:
        """`peak_rss_mb`, `rss_after_mb`, `peak_rss_kind` and on CUDA `peak_allocated_mb` of a stage ({} if none)."""
        return self.get_meta(f"stage:{name}:memory", {})

    def finish_stage(self, name: str, result: dict) -> None:
        self._tx("UPDATE stages SET status = 'done', finished = ?, result = ? WHERE name = ?",
                 (time.time(), json.dumps(result), name))

    def stage(self, name: str) -> dict | None:
        cur = self.conn.execute("SELECT name, kind, status, started, finished, seconds, result, position "
                                "FROM stages WHERE name = ?", (name,))
        row = cur.fetchone()
        if row is None:
            return None
        keys = [d[0] for d in cur.description]
        out = dict(zip(keys, row))
        out["result"] = json.loads(out["result"]) if out["result"] else None
        return out

    def stages(self) -> list[dict]:
        names = [r[0] for r in self.conn.execute("SELECT name FROM stages ORDER BY position")]
        return [self.stage(n) for n in names]

    # ----------------------------------------------------------------- metrics
    def log_metrics(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        rows = [(stage, step, k, float(v), now) for k, v in metrics.items() if v is not None]
        self._tx("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
        for sink in self.sinks:
            sink.log(stage, step, {k: float(v) for k, v in metrics.items() if v is not None})

    def metrics(self, stage: str, key: str) -> list[tuple[int, float]]:
        return [(s, v) for s, v in self.conn.execute(
            "SELECT step, value FROM metrics WHERE stage = ? AND key = ? ORDER BY step, rowid", (stage, key))]

    def metric_keys(self, stage: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT key FROM metrics WHERE stage = ? ORDER BY key", (stage,))]

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop rows a killed run wrote after its last checkpoint, so a resume does not count them twice."""
        if self.readonly:
            return
        with self.batch():
            self.conn.execute("DELETE FROM metrics WHERE stage = ? AND step > ?", (stage, step))
            self.conn.execute("DELETE FROM samples WHERE stage = ? AND step > ?", (stage, step))

    # ----------------------------------------------------------------- samples
    def add_samples(self, stage: str, step: int, rows: list[dict]) -> None:
        self._tx("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (stage, step, r["problem_id"], r.get("prompt", ""), r["completion"], r.get("answer"),
             r.get("gold"), r.get("reward"), int(bool(r.get("correct"))), r.get("tokens"),
             json.dumps(r.get("meta", {}))) for r in rows])

    def samples(self, stage: str, limit: int | None = None, correct: bool | None = None) -> list[dict]:
        sql = "SELECT * FROM samples WHERE stage = ?"
        args: list = [stage]
        if correct is not None:
            sql += " AND correct = ?"
            args.append(int(correct))
        sql += " ORDER BY step, rowid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self.conn.execute(sql, args)
        keys = [d[0] for d in cur.description]
        return [dict(zip(keys, r)) for r in cur.fetchall()]

    # ----------------------------------------------------------------- per-problem stats
    def set_problem_stats(self, stage: str, key: str, values: dict[str, float]) -> None:
        self._tx("INSERT OR REPLACE INTO problem_stats VALUES (?, ?, ?, ?)",
                 [(pid, key, float(v), stage) for pid, v in values.items()])

    def problem_stats(self, key: str, stage: str | None = None) -> dict[str, float]:
        """Latest value per problem (e.g. key='pass_rate'), optionally from one stage."""
        sql = "SELECT problem_id, value FROM problem_stats WHERE key = ?"
        args: list = [key]
        if stage is not None:
            sql += " AND stage = ?"
            args.append(stage)
        return {pid: v for pid, v in self.conn.execute(sql + " ORDER BY rowid", args)}
