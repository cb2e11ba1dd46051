"""Step-by-step gold solutions for arithmetic expressions (reasoning-gym `basic_arithmetic`, `chain_sum`).

One line per operation in evaluation order (parentheses, then * and /, then + and - left to right),
e.g. `Calculate 4 + 5 * 3.` -> `5 * 3 = 15` / `4 + 15 = 19`. A 135M model learns this format in minutes
(FINDINGS.md); the dataset ships answers only.
"""

from __future__ import annotations

import re

from reasonloop.verify.arithmetic import ArithmeticParser, fmt

# Tokens of a task's expression; spaces and words around it are skipped.
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[-+*/()]")


def solve_steps(expression: str) -> tuple[list[str], str]:
    """Return (one line per operation, final value as text); ValueError for what it cannot parse."""
    steps: list[str] = []
    tokens = _TOKEN.findall(expression.replace("×", "*").replace("÷", "/"))
    try:
        value = ArithmeticParser(tokens, steps.append).parse()
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    return steps, fmt(value)
