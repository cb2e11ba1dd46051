"""Program-of-thought data: GSM8K gold programs from calculator annotations, and the PoT prompt.

GSM8K solutions (Cobbe et al. 2021) mark every computation as ``<<48/2=24>>``. Each annotation
becomes one variable; a number in a later expression that equals an earlier step's result becomes a
reference to that step's variable; the program prints the step holding the final answer. The
solution's sentences stay as comments, so the program reads like the natural-language CoT. ReFT
(Luong et al. 2024) trains and rewards such program CoT; see ``reasonloop.verify.pot``.
"""

from __future__ import annotations

import re
from fractions import Fraction

from reasonloop.tasks.base import Problem
from reasonloop.tasks.gsm8k import CALCULATOR, split_gsm8k_answer

POT_INSTRUCTION = ("Solve the problem by writing a Python program that prints the final answer as a "
                   "number. Put the program in a ```python code block.")

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_ALLOWED = re.compile(r"^[\d.+\-*/() ]+$")


def _value(text: str) -> Fraction | None:
    """Exact value of a plain decimal number ("24", "0.2", ".5", "-3"); None otherwise."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(text) if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", text) else None
    except (ValueError, ZeroDivisionError):
        return None


def _expression(expr: str, results: list[tuple[str, Fraction]]) -> str | None:
    """Python form of one annotation's left side, earlier results replaced by their variables."""
    expr = expr.replace(",", "").replace("$", "").replace("x", "*").replace("×", "*").replace("÷", "/")
    expr = expr.replace("^", "**") if "^" in expr else expr
    if not _ALLOWED.match(expr.replace("**", "*")) or not _NUMBER.search(expr):
        return None

    def name_or_number(match: re.Match) -> str:
        value = Fraction(match.group(0).rstrip(".") or "0")
        for name, result in reversed(results):  # the most recent step with this value
            if result == value:
                return name
        return str(value.numerator) if value.denominator == 1 else match.group(0)  # "05" -> "5"

    return re.sub(r" +", " ", _NUMBER.sub(name_or_number, expr)).strip()


def gsm8k_to_program(answer_text: str) -> str | None:
    """A Python program for a GSM8K ``answer`` field, or None when its annotations do not convert.

    One ``step_i = <expression>`` per ``<<expression=result>>``; the program prints the last step
    whose annotated result equals the ``#### N`` answer (the last step when none does).
    """
    try:
        reasoning, final = split_gsm8k_answer(answer_text)
    except ValueError:
        return None
    gold = _value(final)
    lines: list[str] = []
    results: list[tuple[str, Fraction]] = []
    for sentence in reasoning.splitlines():
        if sentence.strip():
            lines.append("# " + CALCULATOR.sub("", sentence).strip())
        for expr, result in _ANNOTATION.findall(sentence):
            value = _value(result)
            code = _expression(expr, results)
            if value is None or code is None:
                return None
            name = f"step_{len(results) + 1}"
            lines.append(f"{name} = {code}")
            results.append((name, value))
    if not results:
        return None
    answer = next((name for name, value in reversed(results) if value == gold), results[-1][0])
    lines.append(f"print({answer})")
    return "\n".join(lines) + "\n"


def pot_response(program: str) -> str:
    """A program as a completion the P-CoT reward accepts: one fenced ```python block."""
    return f"```python\n{program.rstrip()}\n```"


def to_pot_problems(problems: list[Problem]) -> list[Problem]:
    """GSM8K problems with ``reasoning`` replaced by the fenced gold program; unconvertible ones dropped."""
    out = []
    for p in problems:
        program = gsm8k_to_program(f"{p.reasoning}\n#### {p.answer}") if p.reasoning else None
        if program is not None:
            out.append(Problem(id=p.id, question=p.question, answer=p.answer, reasoning=pot_response(program),
                               difficulty=p.difficulty, source=p.source, meta=dict(p.meta)))
    return out
