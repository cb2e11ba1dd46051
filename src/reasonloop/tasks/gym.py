"""Source `gym`: reasoning-gym tasks as Problems, seeded and reproducible, with train/test overlap removed.

reasoning-gym item i comes from Random(seed + i): pools with nearby seeds share items (FINDINGS.md),
so test problems whose question text occurs in the training pool are dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from reasonloop.errors import UserError
from reasonloop.stage_config import Strict
from reasonloop.tasks.base import Problem
from reasonloop.tasks.registry import TaskSource, register_source

log = logging.getLogger(__name__)


class GymConfig(Strict):
    """The recipe's `task.gym` section."""

    name: str
    """reasoning-gym task name, e.g. `basic_arithmetic`."""
    params: dict[str, Any] = {}
    """Keyword arguments for the task's config (difficulty settings)."""
    train_seed: int = 1_000
    """Seed of the training pool. reasoning-gym item i comes from Random(seed + i): keep seeds far apart."""
    test_seed: int = 9_000_000
    """Seed of the held-out pool; test items whose question also appears in train are dropped."""
    train_size: int = Field(2000, ge=1)
    """Problems generated for the training pool (per level)."""
    test_size: int = Field(500, ge=1)
    """Problems generated for the held-out pool (per level), before overlap removal."""
    levels: list[dict[str, Any]] | None = None
    """Optional difficulty levels (each a params dict, easiest first) for the `levels` curriculum."""


def _dataset(name: str, seed: int, size: int, params: dict):
    import reasoning_gym

    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **params)
    except (KeyError, ValueError, TypeError, AssertionError) as err:
        raise UserError(f"task.gym: cannot create reasoning-gym task {name!r} with {params}: {err}") from None


def _gold_reasoning(entry: dict) -> str | None:
    """Step-by-step solution when we can generate one and it agrees with the dataset's answer."""
    from reasonloop.tasks.arithmetic import solve_steps  # imported on use: it pulls in the verifier

    expression = entry.get("metadata", {}).get("expression")
    if not expression:
        return None
    try:
        steps, value = solve_steps(expression)
    except (ValueError, ZeroDivisionError):
        return None
    return "\n".join(steps) if value == str(entry["answer"]).strip() else None


def gym_problems(name: str, params: dict, seed: int, size: int, split: str,
                 level: int | None = None) -> list[Problem]:
    problems = []
    for i, entry in enumerate(_dataset(name, seed, size, params)):
        difficulty = entry["metadata"].get("num_terms")
        problems.append(Problem(
            id=f"gym-{name}-{seed}-{i}", question=entry["question"], answer=str(entry["answer"]),
            reasoning=_gold_reasoning(entry),
            difficulty=float(level if level is not None else difficulty) if (level is not None or difficulty
                                                                             is not None) else None,
            source=f"gym:{name}", meta={"entry": entry, "split": split}))
    return problems


def drop_bad_gold(problems: list[Problem]) -> list[Problem]:
    """Drop items whose gold answer disagrees with the generated solution (reasoning-gym rounds some
    fractions to 0 at higher term counts; FINDINGS.md)."""
    kept = [p for p in problems if p.reasoning is not None or p.meta["entry"]["metadata"].get(
        "expression") is None]
    if len(kept) < len(problems):
        log.warning("dropped %d gym problems whose gold answer disagrees with their expression",
                    len(problems) - len(kept))
    return kept


def load_gym(gym) -> tuple[list[Problem], list[Problem]]:
    """(train, test) pools for a GymConfig; test items whose question occurs in train are removed."""
    if abs(gym.train_seed - gym.test_seed) < gym.train_size + gym.test_size:
        raise UserError(f"task.gym: train_seed {gym.train_seed} and test_seed {gym.test_seed} are closer "
                        "than the pool sizes; reasoning-gym item i uses Random(seed + i), so the pools "
                        "would share items. Move them far apart.")
    levels = gym.levels or [{}]
    train, test = [], []
    for lvl, extra in enumerate(levels):
        params = {**gym.params, **extra}
        lvl_arg = lvl if gym.levels else None
        train += gym_problems(gym.name, params, gym.train_seed + lvl * 10_000_019, gym.train_size,
                              "train", lvl_arg)
        test += gym_problems(gym.name, params, gym.test_seed + lvl * 10_000_019, gym.test_size,
                             "test", lvl_arg)
    train, test = drop_bad_gold(train), drop_bad_gold(test)
    seen = {p.question for p in train}
    clean = [p for p in test if p.question not in seen]
    if len(clean) < len(test):
        log.info("dropped %d test problems that also occur in the training pool", len(test) - len(clean))
    return train, clean


def _load(cfg) -> tuple[list[Problem], list[Problem]]:
    if cfg.gym is None:
        raise UserError("task.gym: required when task.source is 'gym'")
    return load_gym(cfg.gym)


register_source(TaskSource(
    "gym", _load, parse_spec=lambda spec: {"source": "gym", "gym": {"name": spec[4:]}} if spec.startswith("gym:")
    else None, spec_help="gym:<reasoning-gym name>", describe=lambda cfg, split: f"reasoning-gym {cfg.gym.name!r}"))
