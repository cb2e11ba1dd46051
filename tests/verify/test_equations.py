from fractions import Fraction

import pytest

from reasonloop.verify.equations import (
    canonical_number,
    equation_is_correct,
    equations_are_correct,
    evaluate,
    extract_equations,
    normalise_equation,
)


def test_gsm8k_annotations_take_precedence():
    gold = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72")
    # The prose also holds "48/2 = 24"; the annotations are the equations when present.
    assert extract_equations(gold) == ["48/2=24", "48+24=72"]


def test_text_equations_normalised():
    text = "He pays $1,000 x 2 = $2,000. Then 2.50 + 3 = 5.50 and 3 × 4 = 12 and 8 ÷ 2 = 4."
    assert extract_equations(text) == ["1000*2=2000", "2.5+3=5.5", "3*4=12", "8/2=4"]


def test_chains_latex_percent_and_parentheses():
    assert extract_equations("2 + 3 + 4 = 9") == ["2+3+4=9"]
    assert extract_equations("5 * 3 = 15 + 2 = 17") == ["5*3=15", "15+2=17"]
    assert extract_equations("$3 \\times 4 = 12$ and $10 \\div 4 = 2.5$") == ["3*4=12", "10/4=2.5"]
    assert extract_equations("20% * 50 = 10") == ["20%*50=10"]
    assert extract_equations("(3 + 4) * 2 = 14, i.e. (3 + 4 = 7)") == ["(3+4)*2=14", "3+4=7"]


def test_units_lines_and_running_totals():
    assert extract_equations("5 snakes/jaguar * 6 jaguars = 30 snakes") == ["5*6=30"]
    assert extract_equations("20 total gnomes \u2013 12 gnomes = 8 gnomes") == ["20-12=8"]
    # One line per statement: a unit word does not carry an equation onto the next line.
    assert extract_equations("12 * 150 = 1800\nNectarines = 16 * 30 = 480") == ["12*150=1800", "16*30=480"]
    # A chain whose middle equals both ends keeps both links.
    assert extract_equations("8 * 2 + 4 * 5 = 16 + 20 = 36") == ["8*2+4*5=16+20", "16+20=36"]
    # "= 20 minutes = (60+20) minutes": a number equal to a different expression is a label.
    assert extract_equations("1 hour 20 minutes = (60+20) minutes = 80 minutes") == ["(60+20)=80"]


def test_no_equations_from_fragments():
    assert extract_equations("8 x 1 1/2 = 12 rolls") == []  # mixed number, not 1/2 = 12
    assert extract_equations("60 students x 2/3 = 40") == ["60*2/3=40"]
    assert extract_equations("so 100/5 = 5A/5") == []
    assert extract_equations("8/3 = 24/Y") == []
    assert extract_equations("arrived at 6:00+18 hours = 00:00") == []


def test_no_equations():
    assert extract_equations("The 3 boxes hold 12 apples, so 4 each.") == []
    assert extract_equations("x = 5") == []


def test_same_equations_in_different_words_collapse():
    a = "First, Tom has 3 * 4 = 12 apples. Then he gets 12 + 5 = 17 apples.\nAnswer: 17"
    b = "Multiply: 3 x 4 = 12. Add the five: 12 + 5 = 17.\nAnswer: 17"
    c = "He gets 12 + 5 = 17 apples after having 3 * 4 = 12 apples.\nAnswer: 17"
    assert extract_equations(a) == extract_equations(b)
    # The order of the steps is part of the path.
    assert extract_equations(a) != extract_equations(c)


def test_canonical_number():
    assert [canonical_number(t) for t in ["1,000", "2.50", "3.0", ".5", "007", "0", "$12"]] == \
        ["1000", "2.5", "3", "0.5", "7", "0", "12"]
    assert normalise_equation(" (2.50 x 4) = 10.00 ") == "(2.5*4)=10"


def test_evaluate_exact():
    assert evaluate("1/3+1/3+1/3") == 1
    assert evaluate("2+3*4") == 14
    assert evaluate("(2+3)*4") == 20
    assert evaluate("-(2-5)") == 3
    assert evaluate("20%*50") == 10
    assert evaluate("10-4-3") == 3  # left associative
    assert evaluate("8/4/2") == 1
    assert evaluate(".5*3") == Fraction(3, 2)
    for bad in ["2+", "(2+3", "2 3", "import os", "2**3", ""]:
        with pytest.raises(ValueError):
            evaluate(bad)


def test_equation_correctness():
    assert equation_is_correct("48/2=24")
    assert equation_is_correct("3+4=8") is False
    assert equation_is_correct("1/0=1") is False
    # Rounded to the decimals written on the right.
    assert equation_is_correct("10/3=3.33")
    assert equation_is_correct("7/3=2.3")
    assert equation_is_correct("7/3=2.4") is False
    assert equation_is_correct("10/3=3") is False
    # Within the relative tolerance.
    assert equation_is_correct("100000/3=33333.3334")
    assert equation_is_correct("abc=1") is None


def test_equations_are_correct_filter():
    assert equations_are_correct(extract_equations("3 * 4 = 12 and 12 + 5 = 17"))
    assert not equations_are_correct(extract_equations("3 * 4 = 12 and 12 + 5 = 18"))
    assert equations_are_correct([])
    # Unreadable equations are skipped, not counted as errors.
    assert equations_are_correct(["2^3=8", "2+2=4"])
    assert not equations_are_correct(["2^3=8", "2+2=5"])
