"""Step-by-step gold solutions for arithmetic expressions (reasoning-gym `basic_arithmetic`, `chain_sum`).

One line per operation in evaluation order (parentheses, then * and /, then + and - left to right),
e.g. `Calculate 4 + 5 * 3.` -> `5 * 3 = 15` / `4 + 15 = 19`. A 135M model learns this format in minutes
(FINDINGS.md); the dataset ships answers only.
"""

from __future__ import annotations

import re
from fractions import Fraction

TOKEN = re.compile(r"\d+(?:\.\d+)?|[-+*/()]")


def _fmt(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    return repr(float(x)).rstrip("0").rstrip(".")


class _Solver:
    def __init__(self, expression: str):
        self.tokens = TOKEN.findall(expression.replace("×", "*").replace("÷", "/"))
        self.pos = 0
        self.steps: list[str] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def atom(self) -> Fraction:
        tok = self.take()
        if tok == "-":
            if self.peek() == "(":
                inner = self.atom()
                self.steps.append(f"-({_fmt(inner)}) = {_fmt(-inner)}")
                return -inner
            return -self.atom()
        if tok == "(":
            value = self.sum()
            if self.take() != ")":
                raise ValueError("unbalanced parentheses")
            return value
        return Fraction(tok)

    def binary(self, ops: str, operand) -> Fraction:
        left = operand()
        while self.peek() is not None and self.peek() in ops:
            op = self.take()
            right = operand()
            if op == "/" and right == 0:
                raise ValueError("division by zero")
            value = {"+": left + right, "-": left - right, "*": left * right,
                     "/": left / right if op == "/" else None}[op]
            self.steps.append(f"{_fmt(left)} {op} {_fmt(right)} = {_fmt(value)}")
            left = value
        return left

    def product(self) -> Fraction:
        return self.binary("*/", self.atom)

    def sum(self) -> Fraction:
        return self.binary("+-", self.product)


def solve_steps(expression: str) -> tuple[list[str], str]:
    """Return (one line per operation, final value as text); ValueError for what it cannot parse."""
    solver = _Solver(expression)
    value = solver.sum()
    if solver.peek() is not None:
        raise ValueError(f"unexpected {solver.peek()!r}")
    return solver.steps, _fmt(value)
