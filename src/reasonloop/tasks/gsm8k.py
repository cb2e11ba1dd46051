"""Source `gsm8k`: GSM8K-format JSONL (`question`, `answer` with `<<a*b=c>>` annotations and a final
`#### N`); by default the copy beside the checkout (../shared/data/gsm8k) or under $REASONLOOP_GSM8K."""

from __future__ import annotations

import os
import re
from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.tasks.files import read_records
from reasonloop.tasks.registry import TaskSource, register_source

CALCULATOR = re.compile(r"<<[^<>]*>>")
GSM8K_CANDIDATES = ("../shared/data/gsm8k", "shared/data/gsm8k", "data/gsm8k")


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
            raise UserError(f"{where}: field 'answer': {err}") from None
        steps = len(CALCULATOR.findall(reasoning)) or reasoning.count("\n") + 1
        problems.append(Problem(id=f"gsm8k-{split}-{len(problems)}", question=str(rec["question"]),
                                answer=final, reasoning=reasoning, difficulty=float(steps),
                                source="gsm8k"))
    return problems


def strip_calculator(reasoning: str) -> str:
    return CALCULATOR.sub("", reasoning)


def default_gsm8k_path(split: str) -> str:
    """GSM8K beside the checkout (../shared/data/gsm8k) or under $REASONLOOP_GSM8K."""
    roots = [os.environ["REASONLOOP_GSM8K"]] if os.environ.get("REASONLOOP_GSM8K") else []
    roots += [str(Path(__file__).resolve().parents[3] / c) for c in GSM8K_CANDIDATES] + list(GSM8K_CANDIDATES)
    for root in roots:
        if (Path(root) / f"{split}.jsonl").is_file():
            return str(Path(root) / f"{split}.jsonl")
    raise UserError(f"task.{split}: GSM8K {split}.jsonl not found; set task.{split} to its path "
                    "(or REASONLOOP_GSM8K to its folder)")


def _load(cfg) -> tuple[list[Problem], list[Problem]]:
    return tuple(load_gsm8k(getattr(cfg, split) or default_gsm8k_path(split), split) for split in ("train", "test"))


register_source(TaskSource("gsm8k", _load, parse_spec=lambda spec: {"source": "gsm8k"} if spec == "gsm8k" else None,
                           spec_help="gsm8k", describe=lambda cfg, split: getattr(cfg, split) or "GSM8K"))
