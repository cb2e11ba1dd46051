import pytest

from reasonloop.errors import UserError
from reasonloop.verify.extract import (
    clean_answer,
    extract_answer,
    extract_answer_line,
    extract_boxed,
    extract_hash,
    extract_last_number,
)


def test_answer_line_last_one_wins_case_insensitive():
    text = "Answer: 3\nwait, that was wrong.\nFINAL ANSWER: 5"
    assert extract_answer_line(text) == "5"


def test_answer_line_markdown_money_and_period():
    assert extract_answer_line("so\n**Answer:** $1,250.") == "1250"
    assert extract_answer_line("**Answer**: 42") == "42"
    assert extract_answer_line("Answer: 18 dollars") == "18 dollars"
    assert extract_answer_line("Answer: 4.5") == "4.5"


def test_answer_line_unwraps_boxed_and_skips_empty_lines():
    assert extract_answer_line("Answer: \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    # An empty answer line after a real one does not erase it.
    assert extract_answer_line("Answer: 7\nAnswer:   ") == "7"
    assert extract_answer_line("no line here, 42") is None


def test_hash():
    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"
    assert extract_hash(gold) == "72"
    assert extract_hash("#### 1\n#### $2,000") == "2000"
    assert extract_hash("no hash 5") is None


def test_boxed_balanced_and_last():
    assert extract_boxed("first \\boxed{1} then \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert extract_boxed("\\boxed{ {a}+{b} }") == "{a}+{b}"
    # A box cut off by the token limit falls back to the previous complete one.
    assert extract_boxed("\\boxed{2} and \\boxed{\\frac{1}{") == "2"
    assert extract_boxed("\\boxed{}") is None
    assert extract_boxed("nothing") is None


def test_last_number():
    assert extract_last_number("3 apples cost $1,200.50 total.") == "1200.50"
    assert extract_last_number("the temperature is -3") == "-3"
    # A minus between numbers is subtraction, not a sign.
    assert extract_last_number("5-3") == "3"
    assert extract_last_number("she ate 3/4 of it") == "3/4"
    assert extract_last_number("It is 5.") == "5"
    assert extract_last_number("no digits") is None


def test_precedence_follows_strategy_order():
    text = "#### 10\nAnswer: 20\n\\boxed{30} and 40"
    assert extract_answer(text) == "20"
    assert extract_answer(text, ["hash", "answer_line"]) == "10"
    assert extract_answer(text, ["boxed"]) == "30"
    assert extract_answer(text, ["last_number"]) == "40"
    # Earlier strategies that find nothing fall through to later ones.
    assert extract_answer("it is 9", ["answer_line", "hash", "boxed", "last_number"]) == "9"


def test_nothing_found_is_none():
    assert extract_answer("I do not know.") is None
    assert extract_answer("Answer 12", ["answer_line", "hash", "boxed"]) is None


def test_unknown_strategy_message():
    with pytest.raises(UserError, match=r"task.extract: unknown strategy 'regex'; choose from answer_line"):
        extract_answer("x", ["regex"])


def test_clean_answer():
    assert clean_answer(" `$3,000,000`. ") == "3000000"
    assert clean_answer("1,2") == "1,2"  # not thousands grouping: left for equivalence
    assert clean_answer("...") == "..."
    assert clean_answer(" $ ") is None
