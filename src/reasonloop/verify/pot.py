"""Program-of-thought (P-CoT) solutions: the completion is a Python program whose printed output
(or ``solution()`` return value) is the answer. Rewards run it in the sandbox.

From ReFT ("ReFT: Reasoning with Reinforced Fine-Tuning", Luong et al. 2024), whose best GSM8K
results use program CoT; its reward is 1 when the program's result is right, 0.1 when the program
runs and prints something wrong, 0 when it fails (``pot_partial_reward``).

Use in a recipe: ``reward: ["reasonloop.verify.pot:pot_reward"]`` (or ``:pot_partial_reward``).
"""

from __future__ import annotations

import re

from reasonloop.tasks.base import Problem
from reasonloop.verify.equiv import answers_match
from reasonloop.verify.extract import clean_answer
from reasonloop.verify.sandbox import ProgramResult, run_programs

POT_TIMEOUT_S = 5.0
POT_MEMORY_MB = 512
PARTIAL_WRONG = 0.1  # ReFT: ran and gave an answer, but the wrong one

# ```python / ```py / ```Python3 fences; the closing fence may be missing when generation was cut off.
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_DEFINES_SOLUTION = re.compile(r"^def\s+solution\s*\(", re.MULTILINE)
_CALLS_SOLUTION = re.compile(r"(?<![\w.])solution\s*\(")


def extract_program(completion: str) -> str:
    """The last ```python fenced block of a completion, else the whole text."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def with_solution_call(program: str) -> str:
    """Append ``print(solution())`` when the program defines ``solution()`` but never calls it."""
    if _DEFINES_SOLUTION.search(program) and len(_CALLS_SOLUTION.findall(program)) == 1:
        return program.rstrip() + "\n\n_result = solution()\nif _result is not None:\n    print(_result)\n"
    return program


def program_answer(result: ProgramResult) -> str | None:
    """The answer a finished program gave: its last non-empty output line, cleaned; None if it failed."""
    if not result.ok:
        return None
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return clean_answer(lines[-1]) if lines else None


def run_solutions(completions: list[str], timeout_s: float = POT_TIMEOUT_S,
                  memory_mb: int = POT_MEMORY_MB) -> list[ProgramResult]:
    """Run each completion's program in the sandbox, in parallel, in order."""
    programs = [with_solution_call(extract_program(c)) for c in completions]
    return run_programs(programs, timeout_s=timeout_s, memory_mb=memory_mb)


def pot_answers(completions: list[str], timeout_s: float = POT_TIMEOUT_S) -> list[str | None]:
    """The answer of each completion's program (None where it failed or printed nothing)."""
    return [program_answer(r) for r in run_solutions(completions, timeout_s=timeout_s)]


def _check(completions: list[str], problems: list[Problem]) -> None:
    if len(completions) != len(problems):
        raise ValueError(f"pot reward: {len(completions)} completions for {len(problems)} problems")


def pot_reward(completions: list[str], problems: list[Problem]) -> list[float]:
    """1.0 when the program's answer matches ``problem.answer``, else 0.0."""
    _check(completions, problems)
    answers = pot_answers(completions)
    return [1.0 if answers_match(a, p.answer) else 0.0 for a, p in zip(answers, problems)]


def pot_partial_reward(completions: list[str], problems: list[Problem]) -> list[float]:
    """ReFT's shaping: 1.0 right, 0.1 the program ran and printed a wrong answer, 0.0 no answer."""
    _check(completions, problems)
    answers = pot_answers(completions)
    return [0.0 if a is None else 1.0 if answers_match(a, p.answer) else PARTIAL_WRONG
            for a, p in zip(answers, problems)]
