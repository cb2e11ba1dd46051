"""Chain the stages of a recipe in one run folder; resume what a killed run left unfinished.

Run folder layout:
  recipe.yaml      the recipe as resolved (overrides applied)
  run.lock         held (flock) by the one process running in the folder (runs/lock.py)
  store.sqlite     metrics, samples, stage status (runs/store.py); paths in it are relative to the folder,
                   so a run folder can be moved and resumed from anywhere
  stages/<name>/   model/ (HF folder, the stage's output) and checkpoint/ (trainer state for resume)
  summary.json     one entry per stage; report.html
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reasonloop import dist, memory
from reasonloop.atomic import write_text_atomic
from reasonloop.config import Recipe
from reasonloop.errors import UserError
from reasonloop.runs.lock import RunLock
from reasonloop.runs.store import RunStore
from reasonloop.stage_registry import get_stage

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    store: RunStore
    progress: bool = True
    current_model: str = "default"  # what the next stage starts from
    outputs: dict[str, str] = field(default_factory=dict)  # stage name -> its output model folder
    _task: object = None

    @property
    def task(self):
        """Train/test problems, loaded once per run."""
        if self._task is None:
            from reasonloop.tasks import load_task

            self._task = load_task(self.recipe.task)
        return self._task

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def resolve_model(self, ref: str | None) -> str:
        """A stage name (its output), `base` (the recipe's `model.path`), `default`, or a path; None means
        the previous stage's output."""
        if ref is None:
            return self.current_model
        if ref == "base":
            return self.recipe.model.path
        if ref in self.outputs:
            return self.outputs[ref]
        if ref in self.recipe.stage_names():
            raise UserError(f"init_from: stage {ref!r} has not produced a model (yet)")
        return ref


def fingerprint(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprints(recipe: Recipe) -> dict[str, str]:
    """A stage's result depends on the model, the task and every stage up to it. Settings left at their
    defaults are not part of it, so a reasonloop that adds a setting can still resume a run folder that an
    older one started (the recipe as it reads is the same)."""
    base = recipe.model_dump(include={"model", "task"}, exclude_defaults=True)
    stages = [s.model_dump(exclude_defaults=True) | {"kind": s.kind} for s in recipe.stages]
    return {name: fingerprint([base, stages[: i + 1]]) for i, name in enumerate(recipe.stage_names())}


def check_resumable(store: RunStore, recipe: Recipe, run_dir: Path) -> None:
    """Refuse to continue a run whose recipe changed for a stage that already did some work.

    A stage that started but left nothing (no checkpoint, no output: it failed on bad input) is planned
    afresh with the new recipe: its rows are dropped, so the corrected run can go on in the same folder.
    """
    old = store.get_meta("stage_fingerprints", {})
    new = stage_fingerprints(recipe)
    for name, fp in old.items():
        row = store.stage(name)
        if row is None or new.get(name) == fp:
            continue
        stage_dir = run_dir / "stages" / name
        if row["status"] != "done" and not (stage_dir.is_dir() and any(stage_dir.iterdir())):
            log.info("stage %s changed; it had left nothing behind, so it runs with the new recipe", name)
            store.forget_stage(name)
        else:
            raise UserError(f"the recipe changed for stage {name!r}, which this run folder already "
                            f"{'completed' if row['status'] == 'done' else 'started'}; use a new --out "
                            "folder, or restore the recipe saved in the run folder (recipe.yaml)")


def clean_leftovers(run_dir: Path) -> None:
    """Remove what a killed run left half-written: temp folders and files (`.checkpoint.*`, `.model.*`,
    `.kept.jsonl.*`, `*.tmp`) and `X.old` beside a complete `X` (a kill between two renames). Only
    called with the run lock held, so no other process is writing them."""
    leftovers = list(run_dir.glob("*.tmp"))
    stages = run_dir / "stages"
    if stages.is_dir():
        leftovers += [p for p in stages.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
        leftovers += [p for p in stages.rglob("*.old") if p.with_suffix("").exists()]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
    if leftovers:
        log.info("removed %d temporary files or folders left by an interrupted run", len(leftovers))


def _summary_entries(ctx: RunContext) -> list[dict]:
    rows = ctx.store.stages()
    entries = []
    for i, row in enumerate(rows):
        result = row["result"] or {}
        entry = {"name": row["name"], "kind": row["kind"], "seconds": round(row["seconds"], 1),
                 "status": row["status"]}
        entry.update({k: v for k, v in result.items() if k not in ("eval", "model")})
        entry.update(ctx.store.stage_memory(row["name"]))
        if row["kind"] == "eval" and "top1" in result:
            entry["eval"] = _eval_brief(result)
        elif "model" in result and i + 1 < len(rows) and rows[i + 1]["kind"] == "eval" and rows[i + 1]["result"]:
            # the eval right after a stage that trained the model measures that model; a stage that made
            # no new model (a verifier) gets no eval numbers that were not its own
            entry["eval"] = _eval_brief(rows[i + 1]["result"])
        entries.append(entry)
    return entries


def _eval_brief(result: dict) -> dict:
    """The evaluation fields of a summary entry. The documented ones are always there (maj_k is null
    for a greedy-only evaluation), so readers of summary.json need no key checks."""
    always = ("top1", "top1_ci95", "n", "maj_k", "mean_tokens")
    optional = ("maj_k_ci95", "pass_k", "pass_k_ci95", "k", "seeds", "sampled_acc", "sampled_acc_ci95", "sampling",
                "paired", "paired_skipped", "rerank_k", "rerank_k_ci95", "weighted_maj_k", "weighted_maj_k_ci95",
                "verifier_paired")
    return {**{k: result.get(k) for k in always}, **{k: result[k] for k in optional if k in result}}


def _ablation(ctx: RunContext, entries: list[dict]) -> dict | None:
    """`run.ablation` names eval stages to set side by side, each after the first paired with the first
    (runs/ablation.py)."""
    from reasonloop.runs.ablation import ablation_from_store

    briefs = {e["name"]: e["eval"] for e in entries if e["kind"] == "eval" and "eval" in e}
    return ablation_from_store(ctx.store, ctx.recipe.run.ablation, briefs)


def write_summary(ctx: RunContext, extra: dict | None = None) -> dict:
    entries = _summary_entries(ctx)
    summary = {"run_dir": str(ctx.run_dir), "stages": entries, **(extra or {})}
    ablation = _ablation(ctx, entries)
    if ablation:
        summary["ablation"] = ablation
    write_text_atomic(ctx.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _open_store(recipe: Recipe, run_dir: Path) -> tuple[RunStore, RunLock | None]:
    """Rank 0 locks the run folder, then creates and writes the run store; other ranks (torchrun) open it
    read-only afterwards."""
    store, lock, problem = None, None, None
    if dist.is_main():
        try:
            lock = RunLock(run_dir).acquire()
            clean_leftovers(run_dir)
            store = RunStore(run_dir / "store.sqlite")
            from reasonloop.runs.sinks import make_sinks

            check_resumable(store, recipe, run_dir)
            store.sinks = make_sinks(recipe.run.report_to, run_dir)
            store.set_meta("stage_fingerprints", stage_fingerprints(recipe))
            (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        except UserError as err:
            problem = str(err)
    problem = dist.broadcast_object(problem)  # every rank stops with the same message, none waits forever
    if problem is not None:
        if store is not None:
            store.close()
        if lock is not None:
            lock.release()
        raise UserError(problem)
    return (store if store is not None else RunStore(run_dir / "store.sqlite", readonly=True)), lock


def clock(seconds: float) -> str:
    """`h:mm:ss` of a duration."""
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def estimate_remaining(done: list[tuple[str, float]], remaining: list[str]) -> float | None:
    """Seconds the `remaining` stage kinds will take, from the (kind, seconds) of the stages done so far:
    each remaining stage is taken to last as long as the mean of the done stages of its kind, or of all
    done stages when none of its kind has run (an eval is much shorter than an RL stage). None before
    any stage is done: there is nothing to go by."""
    if not remaining:
        return 0.0
    if not done:
        return None
    overall = sum(s for _, s in done) / len(done)
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in done:
        by_kind.setdefault(kind, []).append(seconds)
    return sum(sum(by_kind[k]) / len(by_kind[k]) if k in by_kind else overall for k in remaining)


def progress_line(position: int, total: int, name: str, event: str, elapsed: float, left: float | None,
                  now: float) -> str:
    """`stage 3/7 rft: start; elapsed 0:12:31, ETA 14:32:10 (~0:30:00 left)` for the run log."""
    eta = "ETA unknown" if left is None else \
        f"ETA {time.strftime('%H:%M:%S', time.localtime(now + left))} (~{clock(left)} left)"
    return f"stage {position + 1}/{total} {name}: {event}; elapsed {clock(elapsed)}, {eta}"


def run_pipeline(recipe: Recipe, run_dir: str | Path, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    store, lock = _open_store(recipe, run_dir)
    ctx = RunContext(recipe=recipe, run_dir=run_dir, store=store, progress=progress and recipe.run.progress,
                     current_model=recipe.model.path)
    hf_bars = _hf_progress_bars(ctx.progress)
    started, total = time.time(), len(recipe.stages)
    done: list[tuple[str, float]] = []  # (kind, seconds) of finished stages, this run or an earlier attempt
    try:
        summary = None
        for i, (cfg, name) in enumerate(zip(recipe.stages, recipe.stage_names())):
            kinds_left = [s.kind for s in recipe.stages[i:]]
            now = time.time()
            log.info(progress_line(i, total, name, "start", now - started, estimate_remaining(done, kinds_left), now))
            ran = _run_stage(ctx, i, cfg, name)
            seconds = (ctx.store.stage(name) or {}).get("seconds") or 0.0
            done.append((cfg.kind, seconds))
            now = time.time()
            event = f"done in {clock(seconds)}" if ran else f"skipped (done earlier in {clock(seconds)})"
            log.info(progress_line(i, total, name, event, now - started, estimate_remaining(done, kinds_left[1:]),
                                   now))
            if dist.is_main():
                write_summary(ctx)
        if dist.is_main():
            summary = write_summary(ctx)
            from reasonloop.runs.report import write_report

            write_report(run_dir)
        return dist.broadcast_object(summary)
    finally:
        store.close()
        if lock is not None:
            lock.release()
        _hf_progress_bars(hf_bars)


def _hf_progress_bars(enabled: bool) -> bool:
    """Show or hide transformers' own bars (weight loading) with ours; returns the previous setting."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    return before


def to_run_relative(value, run_dir: Path):
    """Paths inside the run folder, as stored: relative to the folder, not to the working directory."""
    if isinstance(value, dict):
        return {k: to_run_relative(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [to_run_relative(v, run_dir) for v in value]
    if isinstance(value, str):
        parts, base = Path(value).parts, run_dir.parts
        if parts[: len(base)] == base and parts[len(base): len(base) + 1] == ("stages",):
            return str(Path(*parts[len(base):]))
    return value


def stage_output(run_dir: Path, model: str) -> Path:
    """A stored model path as a path from here. Run folders written before paths were stored relative
    to the folder hold paths relative to the working directory of their first run."""
    path = run_dir / model
    return Path(model) if not path.exists() and Path(model).exists() else path


def _run_stage(ctx: RunContext, position: int, cfg, name: str) -> bool:
    """Run one stage, or skip it when an earlier attempt finished it; True when it ran."""
    # Rank 0's view of the stage decides for all ranks: they skip or run it together.
    row = dist.broadcast_object(ctx.store.stage(name) if dist.is_main() else None)
    if row is not None and row["status"] == "done":
        model = (row["result"] or {}).get("model")
        if not model or (stage_output(ctx.run_dir, model) / "config.json").is_file():
            log.info("stage %s already done; skipping", name)
            if model:
                ctx.outputs[name] = ctx.current_model = str(stage_output(ctx.run_dir, model))
            return False
        # Its model folder was deleted: the stage runs again, resuming at its last checkpoint (its last
        # step), which holds the weights; without a checkpoint it trains again from the same seeds.
        log.warning("stage %s is done but its model folder is missing; rebuilding it", name)
        ctx.store.reopen_stage(name)
    if row is not None and cfg.kind == "eval":
        ctx.store.truncate_after(name, -1)  # an evaluation killed midway starts over: drop its partial rows
    ctx.store.start_stage(name, cfg.kind, position)
    run = get_stage(cfg.kind).run_fn()  # the stage's module is imported here, so its deps stay optional
    measured, since = memory.reset_peak(), memory.mark()
    started = time.time()
    try:
        result = run(ctx, cfg, name)
    finally:
        ctx.store.add_stage_seconds(name, time.time() - started)
        _record_memory(ctx, name, measured)
    ctx.store.finish_stage(name, to_run_relative(result, ctx.run_dir))
    left = memory.survivors(since)
    if left:  # the next stage would carry them: a reference the stage should have dropped
        log.warning("stage %s: still alive after the stage ended: %s", name, ", ".join(left))
    if result.get("model"):
        ctx.outputs[name] = ctx.current_model = result["model"]
    return True


def _record_memory(ctx: RunContext, name: str, measured: str) -> None:
    """The stage's peak memory into the run store, after returning what the stage freed to the OS;
    `rss_after_mb` is what it leaves the next stage to start from."""
    peak = memory.peak()
    memory.release()
    after = memory.rss_mb()
    values = {**peak, "peak_rss_kind": measured, **({} if after is None else {"rss_after_mb": round(after, 1)})}
    ctx.store.record_stage_memory(name, values)
    log.info("stage %s: peak resident memory %s MB%s", name, peak.get("peak_rss_mb", "?"),
             f", peak CUDA allocated {peak['peak_allocated_mb']} MB" if "peak_allocated_mb" in peak else "")
