"""The one judge of a completion: its answer, whether it is right, whether it is in the asked format.

Evaluation, RFT and RL all call `judge` (or `is_correct` for one completion), so one change to how
answers are judged reaches every stage, and each completion is judged once (a program-of-thought
completion's program runs once, even when both a reward and the accuracy metric need its answer).

The ``task`` argument is the recipe's ``task`` section (`reasonloop.config.TaskConfig`); the fields
read are ``extract``, ``answer_format``, ``numeric_tolerance`` and ``tolerance_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from reasonloop.tasks.base import Problem
from reasonloop.verify.equiv import answers_match, canonical_answer, gym_score, is_gym
from reasonloop.verify.extract import STRATEGIES, extract_answer

if TYPE_CHECKING:
    from reasonloop.config import TaskConfig

__all__ = ["Verdict", "judge", "is_correct", "canonical_answer"]


@dataclass(frozen=True)
class Verdict:
    """How one completion was judged."""

    answer: str | None
    """The extracted answer (program-of-thought: what the program printed); None when none was found."""
    correct: bool
    """The answer equals the gold answer."""
    formatted: bool
    """The completion gives an answer in the format the task asks for (`task.answer_format`): ``Answer:``
    line, ``#### N``, ``\\boxed{}``, or a program that ran and printed something. Fallback extractors
    such as ``last_number`` do not count: ReFT's 0.1 partial reward is earned by this, not by any digit."""


def _default_task():
    from reasonloop.config import TaskConfig

    return TaskConfig()


def _answer_matches(answer: str | None, problem: Problem, task) -> bool:
    if is_gym(problem):  # reasoning-gym's own scorer: full marks mean correct
        return gym_score(answer, problem) >= 1.0
    return answers_match(answer, problem.answer, task.numeric_tolerance, task.tolerance_mode == "relative")


def judge(completions: list[str], problems: list[Problem], task: "TaskConfig | None" = None) -> list[Verdict]:
    """Judge each completion against its problem's gold answer (programs run in the sandbox in parallel)."""
    if len(completions) != len(problems):
        raise ValueError(f"judge: {len(completions)} completions for {len(problems)} problems")
    task = task or _default_task()
    if task.answer_format == "program":
        from reasonloop.verify.pot import pot_answers

        answers = pot_answers(completions)
        formatted = [a is not None for a in answers]
    else:
        answers = [extract_answer(c, task.extract) for c in completions]
        find = STRATEGIES[task.answer_format]
        formatted = [find(c) is not None for c in completions]
    return [Verdict(answer=a, correct=_answer_matches(a, p, task), formatted=f)
            for a, p, f in zip(answers, problems, formatted)]


def is_correct(completion: str, gold: "str | Problem", task: "TaskConfig | None" = None) -> bool:
    """Is the completion's final answer the gold one? ``gold``: the gold answer text or the `Problem`."""
    problem = gold if isinstance(gold, Problem) else Problem(id="", question="", answer=str(gold))
    return judge([completion], [problem], task)[0].correct
