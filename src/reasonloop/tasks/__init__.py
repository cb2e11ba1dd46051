"""Problem sources (GSM8K, JSONL/Parquet/HF datasets, reasoning-gym) behind one `load_task`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.tasks.files import read_records
from reasonloop.tasks.gsm8k import load_gsm8k

__all__ = ["Problem", "TaskData", "load_task", "default_gsm8k_path", "train_subset"]

GSM8K_CANDIDATES = ("../shared/data/gsm8k", "shared/data/gsm8k", "data/gsm8k")


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


def default_gsm8k_path(split: str) -> str:
    """GSM8K beside the checkout (../shared/data/gsm8k) or under $REASONLOOP_GSM8K."""
    import os

    roots = [os.environ["REASONLOOP_GSM8K"]] if os.environ.get("REASONLOOP_GSM8K") else []
    roots += [str(Path(__file__).resolve().parents[3] / c) for c in GSM8K_CANDIDATES] + list(GSM8K_CANDIDATES)
    for root in roots:
        if (Path(root) / f"{split}.jsonl").is_file():
            return str(Path(root) / f"{split}.jsonl")
    raise UserError(f"task.{split}: GSM8K {split}.jsonl not found; set task.{split} to its path "
                    "(or REASONLOOP_GSM8K to its folder)")


def _mapped(path: str, kind: str, fields: dict[str, str], split: str) -> list[Problem]:
    f = {"question": "question", "answer": "answer", **fields}
    out = []
    for where, rec in read_records(path, required=(f["question"], f["answer"]), kind=kind):
        diff = rec.get(f["difficulty"]) if "difficulty" in f else None
        pid = rec.get(f["id"]) if "id" in f else None
        reasoning = rec.get(f["reasoning"]) if "reasoning" in f else None
        answer = str(rec[f["answer"]]).strip()
        if not answer:
            raise UserError(f"{where}: empty answer in field {f['answer']!r}")
        out.append(Problem(id=str(pid) if pid is not None else f"{Path(path).stem}-{split}-{len(out)}",
                           question=str(rec[f["question"]]), answer=answer, reasoning=reasoning,
                           difficulty=float(diff) if diff is not None else None, source=kind))
    return out


def _load_split(cfg, split: str) -> list[Problem]:
    path = getattr(cfg, split)
    if cfg.source == "gsm8k":
        return load_gsm8k(path or default_gsm8k_path(split), split)
    if path is None:
        raise UserError(f"task.{split}: required for source {cfg.source!r}")
    return _mapped(path, cfg.source, cfg.fields, split)


def load_task(cfg) -> TaskData:
    """Load train and test problems for a TaskConfig (reasonloop.config)."""
    if cfg.source == "gym":
        if cfg.gym is None:
            raise UserError("task.gym: required when task.source is 'gym'")
        from reasonloop.tasks.gym import load_gym

        train, test = load_gym(cfg.gym)
    else:
        train, test = _load_split(cfg, "train"), _load_split(cfg, "test")
    for split, problems in (("train", train), ("test", test)):
        if not problems:  # every metric and schedule divides by the number of problems
            where = f"reasoning-gym {cfg.gym.name!r}" if cfg.source == "gym" else getattr(cfg, split) or "GSM8K"
            raise UserError(f"task.{split}: no problems in {where}")
    if cfg.answer_format == "program":
        from reasonloop.tasks.pot import to_pot_problems

        # Training problems carry gold programs; the judge runs every completion's program
        # (reasonloop.verify.judge reads task.answer_format, the one program-of-thought flag).
        train = to_pot_problems(train)
    return TaskData(train, test)
