"""RFT's data side: which questions can be judged, how many samples each gets, which paths are kept.

Everything here is plain Python over sample records (dicts), so the stage loop in `stages/rft.py`
stays a short sequence of calls and each rule is testable by hand:

- `gold_is_checkable`: a question whose own gold answer the verifier cannot recognise is skipped.
- `allocate_samples`: fixed k per question, or DART-Math's difficulty-aware allocation ("DART-Math:
  Difficulty-Aware Rejection Tuning for Mathematical Problem-Solving", Tong et al. 2024) driven by
  `curriculum.budget.dart_allocation` until every question has its correct samples or its budget is spent.
- `select_paths`: RFT's distinct reasoning paths ("Scaling Relationship on Learning Mathematical
  Reasoning with LLMs", Yuan et al. 2023): correct samples (optionally with correct arithmetic),
  deduplicated, capped with the most different kept, gold first; STaR rationales (Zelikman et al.
  2022) that cite the hint are dropped.
- `read_sample_file`: pooled samples saved by an earlier run; refused when they name problems of
  another task.
- `write_jsonl_atomic` / `load_jsonl`: round files that make a killed stage resumable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from reasonloop.atomic import write_text_atomic
from reasonloop.errors import UserError
from reasonloop.curriculum.budget import dart_allocation
from reasonloop.stages.rft_paths import dedup_key, mentions_hint, select_distinct, strip_hint
from reasonloop.tasks.base import Problem
from reasonloop.tasks.files import read_jsonl
from reasonloop.tasks.prompt import answer_line
from reasonloop.verify.equations import equations_are_correct, extract_equations
from reasonloop.verify.equiv import answers_match, is_gym
from reasonloop.verify.judge import is_correct, judge

def gold_is_checkable(problem: Problem, task_cfg) -> bool:
    """Can the task's verifier recognise the gold answer itself?

    The gold answer written in the task's answer format must be extracted and judged correct; if
    not (an empty answer, a multi-line one, text where extraction only reads numbers), no sample of
    this question can be verified, so rejection sampling on it would keep noise.
    """
    if not problem.answer or not problem.answer.strip():
        return False
    if "\n" in problem.answer.strip():
        return False  # every extraction strategy reads one line: the gold could never be matched
    completion = answer_line(problem.answer.strip(), task_cfg.answer_format)
    try:
        return is_correct(completion, problem, task_cfg)
    except UserError:
        if is_gym(problem):
            return False  # a gym problem without its entry cannot be scored
        raise


def allocate_samples(sample: Callable[[dict[int, int], int], dict[int, list[bool]]], n_questions: int,
                     first: int, allocation: str = "fixed", min_correct: int = 2,
                     budget: int = 16) -> tuple[list[int], list[int], int]:
    """Draw samples until the allocation rule is satisfied; return (tries, correct, calls).

    ``sample(requests, call)`` draws ``requests[i]`` more samples for question ``i`` and returns
    their correctness flags per question. Every question first gets ``first`` samples (at most
    ``budget`` under DART). ``fixed`` stops there. ``uniform`` / ``prop2diff`` (DART-Math's
    DARS-Uniform / DARS-Prop2Diff) then ask `dart_allocation` for more until it requests nothing;
    each request is at least one sample and never exceeds the budget, so this ends within
    ``budget`` calls.
    """
    if allocation not in ("fixed", "uniform", "prop2diff"):
        raise ValueError(f"unknown allocation {allocation!r}; use fixed, uniform or prop2diff")
    if first < 1:
        raise UserError(f"rft: k must be >= 1, got {first}")
    probe = first if allocation == "fixed" else min(first, budget)
    tries, correct = [0] * n_questions, [0] * n_questions
    requests = {i: probe for i in range(n_questions)}
    calls = 0
    while requests:
        flags = sample(requests, calls)
        calls += 1
        for i, got in flags.items():
            tries[i] += len(got)
            correct[i] += sum(bool(g) for g in got)
        if allocation == "fixed":
            break
        requests = dart_allocation(correct, tries, min_correct, budget, allocation)
    return tries, correct, calls


def arithmetic_ok(text: str) -> bool:
    """Are all equations the solution writes arithmetically right (`verify.equations`)?"""
    return equations_are_correct(extract_equations(text))


def select_paths(problem: Problem, candidates: list[dict], gold: str | None, dedup: str = "equations",
                 cap: int = 4, check_equations: bool = False) -> tuple[list[dict], dict]:
    """Kept rows of one question and its statistics.

    ``candidates`` are sample records with ``completion``, ``correct`` and ``source`` (`sample`,
    `star` or `pool`). Kept: correct ones, minus those with wrong arithmetic when
    ``check_equations``, minus STaR rationales that cite the hint; then `select_distinct` (gold
    first, at most ``cap`` in all). Statistics: ``drawn``/``correct``/``pass_rate`` count the
    model's own samples only (they measure its difficulty for the curriculum); ``distinct`` counts
    the distinct correct paths among all sources before the cap.
    """
    usable, dropped_eq, dropped_hint = [], 0, 0
    for c in candidates:
        if not c["correct"]:
            continue
        if check_equations and not arithmetic_ok(c["completion"]):
            dropped_eq += 1
        elif c["source"] == "star" and mentions_hint(c["completion"]):
            dropped_hint += 1
        else:
            usable.append(c)
    chosen = select_distinct([c["completion"] for c in usable], dedup, cap, gold) if usable or gold \
        else []
    by_text: dict[str, dict] = {}
    for c in usable:
        by_text.setdefault(c["completion"], c)
    kept = []
    for i, text in enumerate(chosen):
        row = {"problem_id": problem.id, "response": text, "source": "gold"}
        if gold is None or i > 0:
            row["source"] = by_text[text]["source"]
            if "hinted_question" in by_text[text]:
                row["hinted_question"] = by_text[text]["hinted_question"]
        kept.append(row)
    own = [c for c in candidates if c["source"] == "sample"]

    def count(src: str, ok: bool | None = None) -> int:
        return sum(1 for c in candidates if c["source"] == src and (ok is None or bool(c["correct"]) == ok))

    stats = {"problem_id": problem.id, "drawn": len(own), "correct": count("sample", True),
             "pass_rate": count("sample", True) / len(own) if own else 0.0,
             "star_drawn": count("star"), "star_correct": count("star", True),
             "pooled": count("pool"), "pooled_correct": count("pool", True),
             "distinct": len({dedup_key(c["completion"], dedup) for c in usable}),
             "kept": len(kept), "dropped_equations": dropped_eq, "dropped_hint": dropped_hint}
    return kept, stats


def training_question(row: dict, problem: Problem) -> str:
    """The question a kept row is trained on: a STaR rationale was sampled with the answer as a hint,
    but is trained on the question without it (at test time there is no hint)."""
    if "hinted_question" in row:
        return strip_hint(row["hinted_question"])
    return problem.question


def summarise(stats: list[dict]) -> dict:
    """Round summary: samples drawn, questions, kept rows, distinct paths (mean and histogram)."""
    n = len(stats)
    hist: dict[str, int] = {}
    for s in stats:
        hist[str(s["distinct"])] = hist.get(str(s["distinct"]), 0) + 1
    return {"questions": n, "samples_drawn": sum(s["drawn"] + s["star_drawn"] for s in stats),
            "correct": sum(s["correct"] for s in stats), "kept": sum(s["kept"] for s in stats),
            "solved": sum(1 for s in stats if s["correct"] > 0),
            "rationalized": sum(1 for s in stats if s["correct"] == 0 and s["star_correct"] > 0),
            "pooled": sum(s["pooled"] for s in stats),
            "distinct_paths_mean": sum(s["distinct"] for s in stats) / n if n else 0.0,
            "distinct_paths_hist": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
            "pass_rate_mean": sum(s["pass_rate"] for s in stats) / n if n else 0.0}


def read_sample_file(path: str, problems: dict[str, Problem], task_cfg) -> list[dict]:
    """Pooled samples from a JSONL of ``{problem_id, completion, ...}`` (e.g. an earlier RFT round's
    ``samples.jsonl``), re-judged with this task's verifier.

    A file naming problems this task does not have, or giving another gold answer for one, was
    sampled on another task: refused with a message naming the file.
    """
    rows, unknown, total = [], [], 0
    for where, rec in read_jsonl(path):
        total += 1
        for key in ("problem_id", "completion"):
            if key not in rec or rec[key] is None:
                raise UserError(f"{where}: missing field {key!r} (pooled sample files need "
                                "problem_id and completion)")
        pid = str(rec["problem_id"])
        problem = problems.get(pid)
        if problem is None:
            unknown.append(pid)
            continue
        if rec.get("gold") is not None and not answers_match(str(rec["gold"]), problem.answer):
            raise UserError(f"{where}: problem {pid!r} has gold answer {rec['gold']!r} in this file but "
                            f"{problem.answer!r} in this task; the samples come from another task")
        rows.append({"problem_id": pid, "completion": str(rec["completion"]), "source": "pool",
                     "origin": str(path), "tokens": rec.get("tokens")})
    if unknown:
        raise UserError(f"{path}: {len(unknown)} of {total} samples name problems that are not in this "
                        f"task's training set (first: {unknown[0]!r}); the file was sampled on another task")
    if not total:
        raise UserError(f"{path}: no samples")
    verdicts = judge([r["completion"] for r in rows], [problems[r["problem_id"]] for r in rows], task_cfg)
    return [{**r, "correct": v.correct} for r, v in zip(rows, verdicts)]


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Write rows as JSONL through a temp file and a rename: a killed process leaves the old file or none."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                      what="samples", kept="files written before are kept")


def load_jsonl(path: Path) -> list[dict]:
    return [rec for _, rec in read_jsonl(path)]
