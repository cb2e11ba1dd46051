"""Difficulty estimates against hand-computed values, and the messages bad input gets."""

from __future__ import annotations

import pytest

from reasonloop.curriculum.difficulty import (accuracy_by_level, bucketize, estimate_difficulty,
                                              length_difficulty, metadata_difficulty, normalise,
                                              pass_rate_difficulty, solution_steps)
from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem

GSM8K_REASONING = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                   "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def _p(pid, difficulty=None, reasoning=None):
    return Problem(id=pid, question="q", answer="1", reasoning=reasoning, difficulty=difficulty)


def test_solution_steps_counts_calculator_annotations_else_lines():
    assert solution_steps(GSM8K_REASONING) == 2
    stripped = "Natalia sold 48/2 = 24 clips in May.\n\nShe sold 48+24 = 72.\nThat is all.\n#### 72"
    assert solution_steps(stripped) == 3  # blank line and the `####` line are not steps
    assert solution_steps("a = 1\nb = 2\nAnswer: 3") == 2
    assert solution_steps("x\n\\boxed{3}") == 1


def test_metadata_difficulty_prefers_the_field_then_counts_steps():
    problems = [_p("a", difficulty=3), _p("b", reasoning=GSM8K_REASONING), _p("c"), _p("d", reasoning="#### 1")]
    assert metadata_difficulty(problems) == [3.0, 2.0, None, None]


def test_pass_rate_difficulty_is_one_minus_rate():
    problems = [_p("a"), _p("b"), _p("c")]
    assert pass_rate_difficulty({"a": 0.25, "c": 1.0}, problems) == [0.75, None, 0.0]
    with pytest.raises(ValueError, match="pass rate of problem 'a' must lie in \\[0, 1\\], got 1.5"):
        pass_rate_difficulty({"a": 1.5}, problems)


def test_length_difficulty_measured_or_gold_words():
    problems = [_p("a", reasoning="one two three"), _p("b")]
    assert length_difficulty({"a": 120.0, "b": 40.5}, problems) == [120.0, 40.5]
    assert length_difficulty({"b": 7}, problems) == [None, 7.0]
    assert length_difficulty(None, problems) == [3.0, None]
    with pytest.raises(ValueError, match="length of problem 'a'"):
        length_difficulty({"a": -1.0}, problems)


def test_normalise_ranks_ties_and_missing():
    assert normalise([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    # sorted 1,1,2,3: the tied pair shares ranks (0+1)/2 = 0.5 -> 0.5/3
    assert normalise([1.0, 2.0, 1.0, 3.0]) == pytest.approx([1 / 6, 2 / 3, 1 / 6, 1.0])
    # known scores 0, 0.5, 1 -> median 0.5 for the missing one; NaN counts as missing
    assert normalise([10.0, None, 30.0, 20.0, float("nan")]) == [0.0, 0.5, 1.0, 0.5, 0.5]
    # known scores 0, 1/3, 2/3, 1 -> median 0.5
    assert normalise([None, 1.0, 2.0, 3.0, 4.0]) == pytest.approx([0.5, 0, 1 / 3, 2 / 3, 1])
    assert normalise([None, None]) == [0.5, 0.5]
    assert normalise([5.0, 5.0, None]) == [0.5, 0.5, 0.5]
    assert normalise([]) == []


def test_bucketize_equal_width_with_one_in_the_last_bucket():
    assert bucketize([0.0, 0.24, 0.25, 0.5, 0.99, 1.0], 4) == [0, 0, 1, 2, 3, 3]
    assert bucketize([0.0, 1.0], 1) == [0, 0]
    with pytest.raises(ValueError, match="normalised into \\[0, 1\\], got 1.5"):
        bucketize([1.5], 4)
    with pytest.raises(ValueError, match="buckets must be >= 1, got 0"):
        bucketize([0.5], 0)


def test_estimate_difficulty_normalises_each_source():
    problems = [_p("a", difficulty=1), _p("b", difficulty=5), _p("c", difficulty=3)]
    assert estimate_difficulty("metadata", problems) == [0.0, 1.0, 0.5]
    assert estimate_difficulty("pass_rate", problems, {"a": 0.9, "b": 0.1, "c": 0.5}) == [0.0, 1.0, 0.5]
    assert estimate_difficulty("length", problems, {"a": 300.0, "b": 100.0, "c": 200.0}) == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="needs measured pass rates"):
        estimate_difficulty("pass_rate", problems)


def test_estimate_difficulty_without_any_value_names_the_field():
    problems = [_p("a"), _p("b")]
    with pytest.raises(UserError) as err:
        estimate_difficulty("metadata", problems, where="stages[1].curriculum")
    assert str(err.value).startswith("stages[1].curriculum.difficulty: 'metadata' gives no difficulty here")
    with pytest.raises(UserError, match="^curriculum.difficulty: 'pass_rate' gives no difficulty"):
        estimate_difficulty("pass_rate", problems, {"zzz": 0.5})


def test_accuracy_by_level():
    levels = [0, 0, 1, 2, 2]
    assert accuracy_by_level([0, 1, 3, 4, 0], [1.0, 0.0, 0.5, 1.0, 1.0], levels) == {0: 2 / 3, 2: 0.75}
    with pytest.raises(ValueError, match="2 indices but 1 rewards"):
        accuracy_by_level([0, 1], [1.0], levels)
