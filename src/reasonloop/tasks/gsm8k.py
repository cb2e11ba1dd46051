"""GSM8K-format JSONL (`question`, `answer` with `<<a*b=c>>` annotations and a final `#### N`)."""

from __future__ import annotations

import re

from reasonloop.tasks.base import Problem
from reasonloop.tasks.files import read_records

CALCULATOR = re.compile(r"<<[^<>]*>>")


def split_gsm8k_answer(answer: str) -> tuple[str, str]:
    """Return (reasoning, final answer) from a GSM8K answer field; raises ValueError without `####`."""
    reasoning, sep, final = answer.rpartition("####")
    if not sep or not final.strip():
        raise ValueError("no '#### <answer>' line")
    return reasoning.strip(), final.strip().replace(",", "")


def load_gsm8k(path: str, split: str) -> list[Problem]:
    problems = []
    for where, rec in read_records(path, required=("question", "answer")):
        try:
            reasoning, final = split_gsm8k_answer(str(rec["answer"]))
        except ValueError as err:
            from reasonloop.errors import UserError

            raise UserError(f"{where}: field 'answer': {err}") from None
        steps = len(CALCULATOR.findall(reasoning)) or reasoning.count("\n") + 1
        problems.append(Problem(id=f"gsm8k-{split}-{len(problems)}", question=str(rec["question"]),
                                answer=final, reasoning=reasoning, difficulty=float(steps),
                                source="gsm8k"))
    return problems


def strip_calculator(reasoning: str) -> str:
    return CALCULATOR.sub("", reasoning)
