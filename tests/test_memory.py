"""memory.py: per-stage peak measurement, returning memory, and the register of what must not outlive a stage;
and, end to end on the tiny model, that no stage's model or engine outlives the stage."""

import gc
import sys

import pytest

from reasonloop import memory
from reasonloop.runs.store import RunStore


def test_maxrss_units_per_platform():
    assert memory.maxrss_mb(2048, "linux") == 2.0  # kilobytes
    assert memory.maxrss_mb(3 * 1024 * 1024, "darwin") == 3.0  # bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_peak_is_reset_per_measurement():
    kind = memory.reset_peak()
    block = bytearray(200 * 1024 * 1024)  # touched (zeroed): 200 MB resident
    block[::4096] = b"x" * len(block[::4096])
    high = memory.peak()["peak_rss_mb"]
    del block
    memory.release()
    memory.reset_peak()
    low = memory.peak()["peak_rss_mb"]
    if kind == "stage":  # the high-water mark could be reset: the second measurement forgets the block
        assert high - low > 150
    else:
        assert high >= low
    assert low >= memory.rss_mb() - 1


def test_peak_falls_back_to_getrusage_without_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_STATUS", tmp_path / "no-status")
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "no-dir" / "clear_refs")
    assert memory.reset_peak() == "process"
    assert memory.peak()["peak_rss_mb"] > 1 and memory.rss_mb() is None


def test_peak_text_for_tables():
    assert memory.peak_text({"peak_rss_mb": 812.4, "peak_rss_kind": "stage"}) == "812"
    assert memory.peak_text({"peak_rss_mb": 812.4, "peak_rss_kind": "process"}) == "<=812"
    assert memory.peak_text({"peak_rss_mb": 812.4, "peak_rss_kind": "stage", "peak_allocated_mb": 1430.2}) \
        == "812 + 1430 GPU"
    assert memory.peak_text({"seconds": 3.0}) == "-"  # a run folder from before memory was measured


def test_release_is_safe_anywhere(monkeypatch):
    memory.release()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory._malloc_trim() is False


def test_survivors_lists_only_live_objects_tracked_since_the_mark():
    class Thing:
        pass

    before = Thing()
    memory.track(before, "before")
    since = memory.mark()
    kept, dropped = Thing(), Thing()
    memory.track(kept, "kept")
    memory.track(dropped, "dropped")
    memory.track(3, "an int: not weak-referenceable, ignored")
    del dropped
    gc.collect()
    assert memory.survivors(since) == ["kept"]
    assert "before" in memory.survivors()


def test_store_keeps_the_largest_peak_over_attempts(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    store.record_stage_memory("sft", {"peak_rss_mb": 900.0, "rss_after_mb": 300.0, "peak_rss_kind": "stage"})
    store.record_stage_memory("sft", {"peak_rss_mb": 700.0, "rss_after_mb": 250.0, "peak_rss_kind": "stage"})
    assert store.stage_memory("sft") == {"peak_rss_mb": 900.0, "rss_after_mb": 250.0, "peak_rss_kind": "stage"}
    assert store.stage_memory("rl") == {}
    store.start_stage("sft", "sft", 0)
    store.forget_stage("sft")  # a stage planned afresh forgets its memory numbers too
    assert store.stage_memory("sft") == {}
    store.close()


def _toy_recipe(tmp_path, model_dir, stages):
    import json

    from reasonloop.config import Recipe

    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "reasoning": f"{a} + {b} = {a + b}"}
            for a in range(1, 5) for b in range(1, 4)]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Recipe(model={"path": str(model_dir)}, stages=stages, run={"progress": False, "engine": "torch"},
                  task={"source": "jsonl", "train": str(data), "test": str(data), "fields": {"reasoning": "reasoning"}})


def _run_checked(monkeypatch, recipe, run_dir) -> tuple[dict[str, list[str]], dict]:
    """Run the pipeline; for each stage, what load_model / make_engine built in it and is alive after it."""
    from reasonloop import pipeline

    left: dict[str, list[str]] = {}
    run_stage = pipeline._run_stage

    def checked(ctx, position, cfg, name):
        since = memory.mark()
        ran = run_stage(ctx, position, cfg, name)
        gc.collect()
        left[name] = memory.survivors(since)
        return ran

    monkeypatch.setattr(pipeline, "_run_stage", checked)
    return left, pipeline.run_pipeline(recipe, run_dir, progress=False)


@pytest.mark.e2e
def test_no_stage_model_or_engine_outlives_its_stage(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Every kind of stage, with what keeps extra objects (a reference model for the KL, periodic evals
    that build engines, RFT's sampler): after each stage nothing that load_model / make_engine built in it
    is alive, and the run's summary holds each stage's peak memory."""
    decoding = {"max_new_tokens": 6}
    stages = [
        {"kind": "eval", "name": "base", "limit": 4, "k": 2, "decoding": decoding},
        {"kind": "sft", "name": "sft", "max_steps": 2, "batch_tokens": 256, "eval_every": 1, "eval_limit": 2,
         "objective": "asft", "optim": {"lr": 1e-3}},
        {"kind": "rft", "name": "rft", "k": 2, "limit": 4, "decoding": {"temperature": 1.0, "max_new_tokens": 6},
         "train": {"max_steps": 1, "batch_tokens": 256, "objective": "asft", "optim": {"lr": 1e-3}}},
        {"kind": "rl", "name": "grpo", "steps": 2, "prompts_per_step": 2, "group_size": 2, "kl_coef": 0.1,
         "decoding": decoding, "eval_every": 1, "eval_limit": 2, "optim": {"lr": 1e-3}},
        {"kind": "eval", "name": "after", "limit": 4, "k": 0, "decoding": decoding},
    ]
    left, summary = _run_checked(monkeypatch, _toy_recipe(tmp_path, tiny_model_dir, stages), tmp_path / "run")
    assert left == {name: [] for name in ("base", "sft", "rft", "grpo", "after")}
    for stage in summary["stages"]:
        assert stage["peak_rss_mb"] > 50 and stage["rss_after_mb"] > 50, stage
        assert stage["peak_rss_kind"] in ("stage", "process")
    from reasonloop.cli import _print_table

    _print_table(summary)
    table = capsys.readouterr().out
    assert "peak MB" in table and memory.peak_text(summary["stages"][-1]) in table
    assert "<th>peak MB</th>" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.e2e
def test_the_lifetime_check_catches_an_engine_cache(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """A stage that parks its engine in a module-level cache keeps the engine and, through it, the model."""
    from reasonloop.stages import evaluate

    cache, make = [], evaluate.make_engine
    monkeypatch.setattr(evaluate, "make_engine", lambda *a, **kw: cache.append(make(*a, **kw)) or cache[-1])
    stages = [{"kind": "eval", "name": "base", "limit": 2, "k": 0, "decoding": {"max_new_tokens": 4}}]
    left, _ = _run_checked(monkeypatch, _toy_recipe(tmp_path, tiny_model_dir, stages), tmp_path / "run")
    assert sorted(left["base"]) == ["model " + str(tiny_model_dir), "torch engine"]
    assert "still alive after the stage ended" in caplog.text


@pytest.mark.e2e
def test_rl_decodes_at_most_batch_size_sequences_at_once(tmp_path, tiny_model_dir, monkeypatch):
    """An rl stage's `batch_size` bounds its engine's KV-cache slots (beside the model and its optimizer
    state, the stage's largest allocation); unset, all of a step's prompts x G decode at once."""
    import reasonloop.generate as generate
    from reasonloop.pipeline import run_pipeline

    built, real = [], generate.make_engine

    def recording(*args, **kw):
        built.append(kw["max_batch"])
        return real(*args, **kw)

    monkeypatch.setattr(generate, "make_engine", recording)
    step = {"kind": "rl", "steps": 1, "prompts_per_step": 2, "group_size": 4, "decoding": {"max_new_tokens": 4},
            "optim": {"lr": 1e-3}}
    stages = [{**step, "name": "capped", "batch_size": 3}, {**step, "name": "whole_step"}]
    run_pipeline(_toy_recipe(tmp_path, tiny_model_dir, stages), tmp_path / "run", progress=False)
    assert built == [3, 8]

