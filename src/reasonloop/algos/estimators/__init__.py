"""Advantage estimators, one registered pure function each (verl's ``core_algos`` registry idea).

An estimator maps a rollout batch's rewards to advantages (and, with a value head, returns). Its
registration says what the RL loop must provide and where the KL goes by default, so the loop has no
``if algorithm == ...`` branches. A new estimator is one module in this package (registered with
`register`; every module here is imported on first use) plus its test; the recipe's ``algorithm``
field accepts its name at once.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class AdvantageInput:
    """What an estimator may read. Groups are consecutive: row i*G .. i*G+G-1 belong to prompt i."""

    rewards: torch.Tensor  # [N] one scalar reward per sample
    group_size: int
    mask: torch.Tensor  # [N, L] completion tokens
    token_rewards: torch.Tensor | None = None  # [N, L] score on the last token, minus the KL penalty if in reward
    values: torch.Tensor | None = None  # [N, L] value predictions at sampling time (value-head estimators)


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    """``fn(inp: AdvantageInput, **settings) -> (advantages [N] or [N, L], returns [N, L] or None)``."""
    settings: tuple[str, ...] = ()
    """RlStage fields passed to ``fn`` as keyword arguments (e.g. ``scale_std``, ``gamma``)."""
    value_head: bool = False
    """Train a value head (and pass its predictions as ``values``)."""
    groups: bool = False
    """Compares the G samples of a prompt: needs group_size >= 2, and groups with equal rewards carry no signal."""
    kl: Literal["reward", "loss"] = "loss"
    """Where the KL to the reference goes unless the recipe's ``kl_in`` says otherwise."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Default KL estimator (recipe: ``kl_estimator``)."""


ESTIMATORS: dict[str, Estimator] = {}
_loaded = False


def register(name: str, **spec) -> Callable:
    """Decorator: ``@register("grpo", groups=True, settings=("scale_std",))`` on an estimator function."""
    def add(fn):
        if name in ESTIMATORS and ESTIMATORS[name].fn is not fn:
            raise ValueError(f"advantage estimator {name!r} is registered twice")
        ESTIMATORS[name] = Estimator(name=name, fn=fn, **spec)
        return fn
    return add


def estimators() -> dict[str, Estimator]:
    """Every registered estimator, after importing each module of this package once."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    return ESTIMATORS


def get_estimator(name: str) -> Estimator:
    found = estimators().get(name)
    if found is None:
        raise ValueError(f"unknown RL algorithm {name!r}; expected one of {', '.join(sorted(estimators()))}")
    return found
