"""How hard each problem is: raw estimates from three sources, then one normalised scale.

Sources (METHODS.md §4): task metadata (procedural levels, number of solution steps), the
model's measured pass rate over k samples (as in DART's difficulty-aware sampling), or
response length. Every function here is pure: measured values (pass rates, lengths) are
computed and cached in the run store by the loops, then handed in as plain dicts.

Raw estimates may be ``None`` (unknown); ``normalise`` turns them into ranks in [0, 1]
(higher = harder) so schedulers never depend on a source's units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem

__all__ = ["metadata_difficulty", "pass_rate_difficulty", "length_difficulty", "solution_steps",
           "normalise", "bucketize", "estimate_difficulty", "accuracy_by_level"]

_CALC = re.compile(r"<<[^<>]*>>")
# Final-answer lines are the conclusion, not a step: `#### 72`, `Answer: 72`, a lone `\boxed{72}`.
_FINAL_LINE = re.compile(r"^\s*(####|answer\s*:|\\boxed\{[^}]*\}\s*\.?\s*$)", re.IGNORECASE)


def solution_steps(reasoning: str) -> int:
    """Steps in a worked solution: GSM8K `<<a*b=c>>` calculator annotations when present,
    else non-empty lines that are not the final-answer line (annotations may have been stripped)."""
    calls = len(_CALC.findall(reasoning))
    if calls:
        return calls
    return sum(1 for line in reasoning.splitlines() if line.strip() and not _FINAL_LINE.match(line))


def metadata_difficulty(problems: Sequence[Problem]) -> list[float | None]:
    """``Problem.difficulty`` (a level, a step count); else the steps of its gold reasoning; else None."""
    out: list[float | None] = []
    for p in problems:
        if p.difficulty is not None:
            out.append(float(p.difficulty))
        elif p.reasoning:
            steps = solution_steps(p.reasoning)
            out.append(float(steps) if steps else None)
        else:
            out.append(None)
    return out


def _check_unit(value: float, what: str, pid: str) -> float:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{what} of problem {pid!r} must lie in [0, 1], got {value!r}")
    return float(value)


def pass_rate_difficulty(pass_rates: Mapping[str, float], problems: Sequence[Problem]) -> list[float | None]:
    """1 - pass rate over k samples, by problem id; None where the problem was not measured."""
    return [1.0 - _check_unit(pass_rates[p.id], "pass rate", p.id) if p.id in pass_rates else None
            for p in problems]


def length_difficulty(lengths: Mapping[str, float] | None, problems: Sequence[Problem]) -> list[float | None]:
    """Longer = harder. ``lengths``: the model's mean response length (tokens) by problem id, as
    measured on its samples; with ``lengths=None``, the word count of the gold reasoning instead.
    Units never mix within one call, and ``normalise`` only uses the order anyway."""
    if lengths is None:
        return [float(len(p.reasoning.split())) if p.reasoning else None for p in problems]
    out: list[float | None] = []
    for p in problems:
        value = lengths.get(p.id)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"length of problem {p.id!r} must be a finite number >= 0, got {value!r}")
        out.append(None if value is None else float(value))
    return out


def normalise(values: Sequence[float | None]) -> list[float]:
    """Ranks scaled into [0, 1]: the easiest known value 0, the hardest 1; tied values share
    their mean rank; unknown values (None, NaN) get the median of the known ones' scores.
    With one or no distinct known value every problem scores 0.5 (nothing to order)."""
    known = [(v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    out: list[float] = [0.5] * len(values)
    if len(known) < 2:
        return out
    known.sort()
    n = len(known)
    scores: list[float] = []
    start = 0
    while start < n:  # walk runs of equal values; each run gets the mean of its 0-based ranks
        end = start
        while end + 1 < n and known[end + 1][0] == known[start][0]:
            end += 1
        score = (start + end) / 2 / (n - 1)
        for _, i in known[start:end + 1]:
            out[i] = score
            scores.append(score)
        start = end + 1
    scores.sort()  # median of the known scores, for the unknown ones
    median = scores[n // 2] if n % 2 else (scores[n // 2 - 1] + scores[n // 2]) / 2
    for i, v in enumerate(values):
        if v is None or math.isnan(v):
            out[i] = median
    return out


def bucketize(difficulties: Sequence[float], buckets: int) -> list[int]:
    """Normalised difficulty -> level 0 (easiest) .. buckets-1: equal-width bins over [0, 1],
    the value 1.0 falling in the last one."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    out = []
    for d in difficulties:
        if not (0.0 <= d <= 1.0):
            raise ValueError(f"difficulties must be normalised into [0, 1], got {d!r}")
        out.append(min(buckets - 1, int(d * buckets)))
    return out


def estimate_difficulty(kind: str, problems: Sequence[Problem], measured: Mapping[str, float] | None = None,
                        where: str = "curriculum") -> list[float]:
    """Normalised difficulty of each problem for ``CurriculumConfig.difficulty``.

    ``measured``: pass rates (``pass_rate``) or mean response lengths (``length``; None falls
    back to gold reasoning length) by problem id, read from the run store by the caller.
    ``where`` is the recipe path of the curriculum section, for error messages.
    """
    if kind == "metadata":
        raw = metadata_difficulty(problems)
        source = "no problem has a difficulty field or gold reasoning to count steps in"
    elif kind == "pass_rate":
        if measured is None:
            raise ValueError("pass_rate difficulty needs measured pass rates (problem id -> rate)")
        raw = pass_rate_difficulty(measured, problems)
        source = "no problem of this task has a measured pass rate"
    elif kind == "length":
        raw = length_difficulty(measured, problems)
        source = "no problem has a measured response length or gold reasoning"
    else:
        raise UserError(f"{where}.difficulty: expected 'metadata', 'pass_rate' or 'length', got {kind!r}")
    if problems and all(v is None for v in raw):
        raise UserError(f"{where}.difficulty: {kind!r} gives no difficulty here ({source}); "
                        "choose another source")
    return normalise(raw)


def accuracy_by_level(indices: Sequence[int], rewards: Sequence[float],
                      buckets_of_problem: Sequence[int]) -> dict[int, float]:
    """Mean reward of the sampled problems at each level present in the batch, for logs.
    ``indices`` index ``buckets_of_problem``; ``rewards[j]`` belongs to ``indices[j]``."""
    if len(indices) != len(rewards):
        raise ValueError(f"{len(indices)} indices but {len(rewards)} rewards")
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for i, r in zip(indices, rewards):
        level = int(buckets_of_problem[i])
        sums[level] = sums.get(level, 0.0) + float(r)
        counts[level] = counts.get(level, 0) + 1
    return {level: sums[level] / counts[level] for level in sorted(sums)}
