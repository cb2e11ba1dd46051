"""Exact arithmetic over ``+ - * / ( )``, unary signs and numbers with an optional ``%``: the one parser
behind checking a written equation (`verify.equations`) and writing step-by-step gold solutions
(`tasks.arithmetic`), which records each operation as it is evaluated."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

TOKEN = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)%?|[-+*/()]")

Step = Callable[[str], None]


def fmt(x: Fraction) -> str:
    """A value as a person writes it: ``15``, ``2.5``, ``0.3333333333333333``."""
    if x.denominator == 1:
        return str(x.numerator)
    return repr(float(x)).rstrip("0").rstrip(".")


class ArithmeticParser:
    """Recursive descent in evaluation order (parentheses, then * and /, then + and - left to right).

    ``on_step`` receives ``"a op b = c"`` for each binary operation (and ``"-(x) = -x"`` for a negated
    bracket) in the order they are computed. ZeroDivisionError propagates; ValueError for anything else
    that is not arithmetic.
    """

    def __init__(self, tokens: list[str], on_step: Step | None = None):
        self.tokens, self.pos, self.on_step = tokens, 0, on_step

    def parse(self) -> Fraction:
        value = self._binary("+-", self._product)
        if self.pos != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        if self.pos >= len(self.tokens):
            raise ValueError("unexpected end")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def _record(self, text: str) -> None:
        if self.on_step is not None:
            self.on_step(text)

    def _binary(self, ops: str, operand) -> Fraction:
        left = operand()
        while self._peek() is not None and self._peek() in ops:
            op, right = self._take(), operand()
            value = {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                     "/": lambda: left / right}[op]()
            self._record(f"{fmt(left)} {op} {fmt(right)} = {fmt(value)}")
            left = value
        return left

    def _product(self) -> Fraction:
        return self._binary("*/", self._factor)

    def _factor(self) -> Fraction:
        token = self._take()
        if token == "-":
            if self._peek() == "(":
                inner = self._factor()
                self._record(f"-({fmt(inner)}) = {fmt(-inner)}")
                return -inner
            return -self._factor()
        if token == "+":
            return self._factor()
        if token == "(":
            value = self._binary("+-", self._product)
            if self._take() != ")":
                raise ValueError("unbalanced parentheses")
            return value
        if token[0].isdigit() or token[0] == ".":
            return Fraction(token[:-1]) / 100 if token.endswith("%") else Fraction(token)
        raise ValueError(f"unexpected {token!r}")


def evaluate(expression: str, on_step: Step | None = None) -> Fraction:
    """Exact value of a normalised expression (no spaces or other characters); ValueError when it is
    not one, ZeroDivisionError propagates."""
    tokens = TOKEN.findall(expression)
    if "".join(tokens) != expression:
        raise ValueError(f"not arithmetic: {expression!r}")
    return ArithmeticParser(tokens, on_step).parse()
