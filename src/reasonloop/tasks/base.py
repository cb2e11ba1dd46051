"""A problem with a checkable answer, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    id: str  # stable across runs: source + index or a hash of the question
    question: str
    answer: str  # gold final answer, as text
    reasoning: str | None = None  # gold chain of thought ending in the answer, when the source has one
    difficulty: float | None = None  # from metadata (level, number of steps); higher = harder
    source: str = ""
    meta: dict = field(default_factory=dict)  # e.g. reasoning-gym entry for its own score_answer
