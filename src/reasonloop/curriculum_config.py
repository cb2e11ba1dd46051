"""The curriculum sections of a recipe: an rl stage's `curriculum` (every scheduler) and an sft stage's
(an order of its examples, METHODS.md §4), and `Strict`, the base of every recipe section. Kept apart from
`stage_config` so neither module outgrows its size; `reasonloop.config` exports them all."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator


def registered(value: str, names) -> str:
    """``value`` if a registry (task sources, estimators, objectives) holds it, else the error pydantic
    reports at the field: the names the recipe may use."""
    if value not in names:
        raise ValueError(f"expected one of {', '.join(names)}, got {value!r}")
    return value


class Strict(BaseModel):
    """Unknown keys are errors: a misspelled setting must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class CurriculumConfig(Strict):
    scheduler: Literal["none", "static", "anneal", "adarft", "sec", "signal", "levels"] = "none"
    """Which schedule picks the next problems."""
    difficulty: Literal["metadata", "pass_rate", "length"] = "metadata"
    """Where a problem's difficulty comes from."""
    buckets: int = 4
    """Number of difficulty levels (arms for `sec`, buckets for `static`)."""
    pacing: Literal["linear", "root", "step"] = "linear"
    """`static`: how fast harder buckets are unlocked over the stage."""
    target_reward: float = 0.5
    """`adarft`: the reward the target difficulty steers towards."""
    step_size: float = 0.1
    """`adarft`: how far the target difficulty moves per unit of reward error (difficulty in [0, 1])."""
    alpha: float = 0.5
    """`sec`: TD(0) learning rate of arm values."""
    temperature: float = 0.2
    """`sec`: softmax temperature over arm values; `signal`: over problem scores (an unseen problem
    scores 1, one that split 2 of 4 samples 1.29, one that all 4 solved 0.71)."""
    decay: float = 0.7
    """`signal`: weight an earlier group's outcomes keep per step (the policy moves; old evidence fades)."""
    promote_at: float = 0.7
    """`levels`: accuracy on the current level that moves to the next."""

    @field_validator("buckets", "step_size", "alpha", "temperature", "decay", "promote_at")
    @classmethod
    def _in_range_for_its_scheduler(cls, value, info):
        """Each range is checked for the scheduler that uses the setting (a `static` curriculum does not
        care about `sec`'s temperature), when the recipe is validated, before any stage runs."""
        rules = {"buckets": (("static", "sec"), lambda v: v >= 1, "must be >= 1"),
                 "step_size": (("adarft",), lambda v: v >= 0, "must be >= 0"),
                 "alpha": (("sec",), lambda v: 0 < v <= 1, "must lie in (0, 1]"),
                 "temperature": (("sec", "signal"), lambda v: v > 0, "must be > 0"),
                 "decay": (("signal",), lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
                 "promote_at": (("levels",), lambda v: 0 <= v <= 1, "must lie in [0, 1]")}
        schedulers, ok, why = rules[info.field_name]
        if info.data.get("scheduler") in schedulers and not ok(value):
            raise ValueError(f"{why}, got {value!r}")
        return value


class SftCurriculum(Strict):
    """The order of an SFT stage's examples by difficulty (`reasonloop.curriculum.sft_order`). RFT's training
    rounds take it too (`train.curriculum`), where `pass_rate` is the round's own measured pass rate."""

    scheduler: str = "none"
    """`none`: shuffled (as without a curriculum); `static`: easy to hard within each epoch; `anneal`: each next
    example drawn with weights that anneal from favouring easy examples to uniform over the epoch."""
    difficulty: Literal["metadata", "pass_rate", "length"] = "metadata"
    """Where an example's difficulty comes from: the task's metadata (a level, else the gold solution's steps),
    a measured pass rate (an earlier stage's `pass_rate` problem stats; an RFT round's own), or the length of
    the gold reasoning."""

    @field_validator("scheduler")
    @classmethod
    def _an_order(cls, value):
        """The reward-steered schedulers need rewards an SFT loop does not produce: say which ones fit."""
        if value == "none":  # the default, validated while stage_config itself is still being imported
            return value
        from reasonloop.curriculum.sft_order import SFT_ORDERS  # the registry of orders; imported on use (cycle)

        names = ["none", *SFT_ORDERS]
        if value in ("adarft", "sec", "signal", "levels"):
            raise ValueError(f"{value!r} steers by rewards, which an sft stage does not produce; use one of "
                             f"{', '.join(names)} here (rl stages take the others)")
        return registered(value, names)
