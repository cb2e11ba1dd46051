import threading

import pytest

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.verify.equiv import (answers_match, canonical_answer, gym_score, looks_mathematical, numbers_match,
                                     parse_number)


@pytest.mark.parametrize("text,value", [
    ("42", 42.0), ("-0", 0.0), ("$1,000", 1000.0), ("3/4", 0.75), ("-3/4", -0.75), ("25%", 25.0),
    ("18 dollars.", 18.0), ("x = 5", 5.0), ("The total is 42", 42.0), ("12 km/h", 12.0),
    ("1{,}000", 1000.0), ("\u22127", -7.0), (".5", 0.5), ("2.", 2.0), ("1e3", 1000.0),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["5 - 3", "3 apples and 4 oranges", "1/0", "\\frac{1}{2}", "blue", "1,2"])
def test_not_a_plain_number(text):
    assert parse_number(text) is None


def test_numbers_match_integer_gold_exactly():
    assert numbers_match(1000.0, 1000.0) and numbers_match(-0.0, 0.0)
    assert not numbers_match(1000.09, 1000.0) and not numbers_match(990.0, 1000.0, 0.01, relative=True)
    assert not numbers_match(1e-9, 0.0)


def test_numbers_match_tolerance_for_decimal_gold():
    assert numbers_match(0.3334, 1 / 3) and not numbers_match(0.333, 1 / 3)  # absolute 1e-4
    assert numbers_match(2.51, 2.5, 0.01) and not numbers_match(2.52, 2.5, 0.01)
    assert numbers_match(2.52, 2.5, 0.01, relative=True)  # 0.02 <= 0.01 * 2.5
    assert not answers_match("1000.09", "1000") and answers_match("1000.0", "1000")
    assert answers_match("0.33333", "1/3") and not answers_match("1000.2", "1000", 1e-3, relative=True)


def test_canonical_answer_is_the_value_correctness_reads():
    same = ["18", "18.0", "$18", "18 dollars", "18 apples", "x = 18", "18.000000001"]
    assert len({canonical_answer(a) for a in same}) == 1
    assert canonical_answer("-0") == canonical_answer("0") and canonical_answer(None) is None
    assert canonical_answer("7,2") != canonical_answer("72")  # not a thousands group: not the number 72
    assert canonical_answer("1,000") == canonical_answer("1000")
    assert canonical_answer("Yes ") == canonical_answer("yes") != canonical_answer("no")
    assert canonical_answer("3/4") == canonical_answer("0.75")


def test_numeric_forms_match():
    assert answers_match("$1,000", "1000")
    assert answers_match("0.75", "3/4")
    assert answers_match("-0", "0")
    assert answers_match("25%", "25")
    assert answers_match("18 dollars", "18")
    assert not answers_match("19", "18")
    assert not answers_match(None, "18")


def test_strings_and_latex():
    assert answers_match("Blue ", "blue")
    assert answers_match("\\text{Blue}", "blue")
    assert not answers_match("red", "blue")
    assert answers_match("\\frac{3}{4}", "0.75")
    assert answers_match("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")
    assert not answers_match("\\frac{1}{3}", "\\frac{\\sqrt{2}}{2}")


def test_prose_skips_math_verify():
    assert looks_mathematical("\\frac{\\sqrt{2}}{2}") and looks_mathematical("(1, 2)")
    assert not looks_mathematical("the apples are blue")
    assert not looks_mathematical("x" * 201)
    # math-verify would read both as products of letters; prose compares as strings only.
    assert not answers_match("the cat", "the dog")


def test_math_verify_off_main_thread():
    # math-verify's SIGALRM timeout raises off the main thread; the call must avoid it.
    results = []
    thread = threading.Thread(target=lambda: results.append(answers_match("\\frac{2}{4}", "\\frac{1}{2}")))
    thread.start()
    thread.join()
    assert results == [True]


def _gym_problem():
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=1)[0]
    return Problem(id="g0", question=entry["question"], answer=str(entry["answer"]),
                   source="gym:basic_arithmetic", meta={"entry": entry})


def test_gym_score_uses_the_dataset_scorer():
    problem = _gym_problem()
    assert gym_score(problem.answer, problem) == 1.0
    assert gym_score(str(int(problem.answer) + 1), problem) == 0.0
    assert gym_score(None, problem) == 0.0


def test_gym_score_errors():
    problem = _gym_problem()
    bare = Problem(id="g1", question="q", answer="1", source="gym:basic_arithmetic")
    with pytest.raises(UserError, match=r"problem g1: source 'gym:basic_arithmetic' needs meta\['entry'\]"):
        gym_score("1", bare)
    entry = dict(problem.meta["entry"], metadata={"source_dataset": "no_such_task"})
    odd = Problem(id="g2", question="q", answer="1", source="gym:no_such_task", meta={"entry": entry})
    with pytest.raises(UserError, match="reasoning-gym has no dataset 'no_such_task'"):
        gym_score("1", odd)
