"""P-CoT rewards: program extraction, solution() convention, exact and ReFT-partial rewards."""

from __future__ import annotations

import pytest

from reasonloop.tasks.base import Problem
from reasonloop.verify.pot import (extract_program, pot_answers, pot_partial_reward, pot_reward, program_answer,
                                   with_solution_call)
from reasonloop.verify.rewards import load_reward
from reasonloop.verify.sandbox import ProgramResult


def _p(answer: str) -> Problem:
    return Problem(id="p", question="q", answer=answer)


def test_extract_program_takes_the_last_python_block_or_the_whole_text():
    text = "Plan:\n```python\nprint(1)\n```\nBetter:\n```py\nprint(2)\n```\nDone."
    assert extract_program(text) == "print(2)\n"
    assert extract_program("x = 3\nprint(x)") == "x = 3\nprint(x)"
    assert extract_program("```python\nprint(5)") == "print(5)"  # cut off before the closing fence


def test_solution_is_called_only_when_the_program_does_not():
    defined = "def solution():\n    return 4"
    assert with_solution_call(defined).endswith("_result = solution()\nif _result is not None:\n    print(_result)\n")
    calls = "def solution():\n    return 4\nprint(solution())"
    assert with_solution_call(calls) == calls
    assert with_solution_call("print(1)") == "print(1)"


def test_program_answer_is_the_last_output_line():
    assert program_answer(ProgramResult(ok=True, stdout="steps\n1,000\n\n", error=None)) == "1000"
    assert program_answer(ProgramResult(ok=True, stdout="", error=None)) is None
    assert program_answer(ProgramResult(ok=False, stdout="5\n", error="crash")) is None


def test_pot_reward_and_partial_reward():
    completions = [
        "```python\nstep_1 = 48 / 2\nprint(48 + step_1)\n```",  # right (72.0 == 72)
        "def solution():\n    return 70 + 1",  # runs, wrong
        "```python\nprint(1 / 0)\n```",  # crashes
        "```python\nprint('no number'\n```",  # syntax error
        "def solution():\n    total = 36 * 2\n    return total",  # right via solution()
    ]
    problems = [_p("72")] * 5
    assert pot_reward(completions, problems) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert pot_partial_reward(completions, problems) == [1.0, 0.1, 0.0, 0.0, 1.0]


def test_pot_answers_and_reward_lengths():
    assert pot_answers([]) == []
    assert pot_answers(["while True:\n    pass", "print(3)"], timeout_s=0.5) == [None, "3"]
    with pytest.raises(ValueError, match="pot reward: 2 completions for 1 problems"):
        pot_reward(["print(1)", "print(2)"], [_p("1")])


def test_recipes_can_name_the_pot_rewards():
    assert load_reward("reasonloop.verify.pot:pot_reward") is pot_reward
    assert load_reward("reasonloop.verify.pot:pot_partial_reward") is pot_partial_reward
