"""The one arithmetic parser: exact values, steps in evaluation order, errors."""

from fractions import Fraction

import pytest

from reasonloop.verify.arithmetic import evaluate


def test_values_and_steps_in_evaluation_order():
    steps = []
    assert evaluate("4+5*3-(2-7)", steps.append) == 24
    assert steps == ["5 * 3 = 15", "4 + 15 = 19", "2 - 7 = -5", "19 - -5 = 24"]
    steps.clear()
    assert evaluate("-(1+2)*2", steps.append) == -6
    assert steps == ["1 + 2 = 3", "-(3) = -3", "-3 * 2 = -6"]
    assert evaluate("50%*3") == Fraction(3, 2) and evaluate("10/4") == Fraction(5, 2) and evaluate("+.5") == Fraction(1, 2)


@pytest.mark.parametrize("bad", ["2 + 3", "2+", "(2+3", "2)", "abc", ""])
def test_what_is_not_arithmetic(bad):
    with pytest.raises(ValueError):
        evaluate(bad)


def test_division_by_zero_propagates():
    with pytest.raises(ZeroDivisionError):
        evaluate("1/(2-2)")
