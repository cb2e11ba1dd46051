"""Whole-run progress: one log line per stage start and end with `stage i/N`, elapsed time and an ETA."""

import json
import logging
import re

import pytest

from reasonloop.config import Recipe
from reasonloop.pipeline import clock, estimate_remaining, progress_line, run_pipeline


def test_clock():
    assert clock(0) == "0:00:00" and clock(61.4) == "0:01:01" and clock(3 * 3600 + 125) == "3:02:05"
    assert clock(-5) == "0:00:00"


def test_estimate_remaining_by_kind_then_overall_mean():
    done = [("eval", 10.0), ("sft", 100.0), ("eval", 20.0)]
    # eval: mean 15; rl has not run: the mean of all done stages, 130 / 3
    assert estimate_remaining(done, ["eval", "rl", "eval"]) == pytest.approx(15 + 130 / 3 + 15)
    assert estimate_remaining(done, []) == 0.0
    assert estimate_remaining([], ["eval"]) is None  # nothing done yet: no basis for an estimate


def test_progress_line():
    now = 1_000_000.0
    assert progress_line(2, 7, "rft", "start", 751, None, now) == "stage 3/7 rft: start; elapsed 0:12:31, ETA unknown"
    line = progress_line(2, 7, "rft", "done in 0:05:00", 60, 1800, now)
    assert line.startswith("stage 3/7 rft: done in 0:05:00; elapsed 0:01:00, ETA ") and line.endswith("(~0:30:00 left)")


def test_run_logs_each_stage_start_and_end(tmp_path, tiny_model_dir, caplog):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    recipe = Recipe(model={"path": str(tiny_model_dir)},
                    task={"source": "jsonl", "train": str(data), "test": str(data)},
                    stages=[{"kind": "eval", "name": f"e{i}", "limit": 2, "k": 0, "decoding": {"max_new_tokens": 2}}
                            for i in range(3)],
                    run={"progress": False})
    with caplog.at_level(logging.INFO, logger="reasonloop.pipeline"):
        run_pipeline(recipe, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ") and "/3" in r.getMessage()]
    assert [line.split(";")[0].split(":")[0] for line in lines] == [
        "stage 1/3 e0", "stage 1/3 e0", "stage 2/3 e1", "stage 2/3 e1", "stage 3/3 e2", "stage 3/3 e2"]
    assert lines[0].endswith("start; elapsed 0:00:00, ETA unknown")
    assert all(re.search(r"elapsed \d+:\d\d:\d\d, ", line) for line in lines)
    assert all(re.search(r"ETA \d\d:\d\d:\d\d \(~\d+:\d\d:\d\d left\)$", line) for line in lines[1:])
    assert re.search(r"e0: done in \d+:\d\d:\d\d;", lines[1]) and lines[-1].endswith("(~0:00:00 left)")

    caplog.clear()  # the same folder again: every stage is skipped, with the time it took before
    with caplog.at_level(logging.INFO, logger="reasonloop.pipeline"):
        run_pipeline(recipe, tmp_path / "run")
    skipped = [r.getMessage() for r in caplog.records if "skipped (done earlier in" in r.getMessage()]
    assert len(skipped) == 3 and skipped[0].startswith("stage 1/3 e0: skipped")
