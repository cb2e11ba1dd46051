"""Source `jsonl`: JSON-lines files; `task.fields` maps their keys to question, answer, reasoning, ...
On the command line, `--task file.jsonl` uses one file for both splits."""

from __future__ import annotations

from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.tasks.files import mapped_problems
from reasonloop.tasks.registry import TaskSource, paths_required, register_source


def parse_spec(spec: str) -> dict | None:
    if not spec.endswith(".jsonl"):
        return None
    if not Path(spec).is_file():
        raise UserError(f"--task {spec}: file not found")
    return {"source": "jsonl", "train": spec, "test": spec}


register_source(TaskSource("jsonl", paths_required(mapped_problems), parse_spec, "file.jsonl"))
