"""Problem sources (GSM8K, JSONL/Parquet/HF datasets, reasoning-gym) behind one `load_task`.

Each source is a module here that registers itself (`tasks.registry`, which imports the built-in ones
when it is first read).
"""

from __future__ import annotations

from dataclasses import dataclass

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.tasks.gsm8k import default_gsm8k_path
from reasonloop.tasks.registry import get_source, task_sources

__all__ = ["Problem", "TaskData", "load_task", "default_gsm8k_path", "train_subset", "task_sources"]


@dataclass
class TaskData:
    train: list[Problem]
    test: list[Problem]


def train_subset(problems: list[Problem], cfg) -> list[Problem]:
    """The training problems a stage uses: ``cfg.skip`` left out, then the first ``cfg.limit`` (all if None)."""
    end = None if cfg.limit is None else cfg.skip + cfg.limit
    if cfg.skip >= len(problems):
        raise UserError(f"{cfg.name or cfg.kind}: skip={cfg.skip} leaves none of the task's {len(problems)} "
                        "training problems")
    return problems[cfg.skip:end]


def load_task(cfg) -> TaskData:
    """Load train and test problems for a TaskConfig (reasonloop.config) from its registered source."""
    source = get_source(cfg.source)
    train, test = source.load(cfg)
    for split, problems in (("train", train), ("test", test)):
        if not problems:  # every metric and schedule divides by the number of problems
            where = source.describe(cfg, split) if source.describe else getattr(cfg, split) or cfg.source
            raise UserError(f"task.{split}: no problems in {where}")
    if cfg.answer_format == "program":
        from reasonloop.tasks.pot import to_pot_problems

        # Training problems carry gold programs; the judge runs every completion's program
        # (reasonloop.verify.judge reads task.answer_format, the one program-of-thought flag).
        train = to_pot_problems(train)
    return TaskData(train, test)
