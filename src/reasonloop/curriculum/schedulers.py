"""Curriculum schedulers: a pure ``update(state, stats) -> state`` plus a sampler reading the state.

The RL loop's interface (SFT and RFT order examples with ``sft_order``; RFT's budget is ``budget``)::

    cur = make_curriculum(cfg.curriculum, difficulties, total_steps, stage_kind="rl")
    state = cur.init_state()                      # or the dict saved in the checkpoint
    for step in range(total_steps):
        idx = cur.sample(state, batch_size, rng)  # problem indices
        ...                                       # generate, reward, train
        state = cur.update(state, BatchStats(idx, rewards, abs_advantages, step))
        log(cur.log(state))

The state is a JSON-serialisable dict, saved beside the model; ``update`` returns a new dict
and never changes its input, so a run resumed from ``json.loads(json.dumps(state))`` with the
same rng draws the same problems as one never interrupted.

Schedulers (``CurriculumConfig.scheduler``):

- ``none``: uniform.
- ``static``: easy -> hard buckets unlocked by a pacing function of training progress
  (competence-based pacing: linear or root, as in Platanios et al. 2019; or discrete steps).
- ``anneal``: every problem is sampled, hard ones with low weight rising linearly to uniform by the end
  of the stage (MacAvaney et al., "Training Curricula for Open Domain Answer Re-Ranking", SIGIR 2020).
- ``adarft``: a target difficulty moved after each batch by the reward error; batches are the problems
  nearest the target (Shi et al., "Efficient Reinforcement Finetuning via Adaptive Curriculum Learning").
- ``sec``: a non-stationary bandit over difficulty buckets; arm reward = mean absolute advantage of its
  problems in the last batch, TD(0) values, Boltzmann sampling (Chen et al., "Self-Evolving Curriculum").
- ``signal``: each problem's pass rate tracked as a decayed Beta posterior over its sampled groups;
  problems drawn by softmax over expected reward variance (split groups return, flat ones rarely).
- ``levels``: procedural tasks with declared levels (``task.gym.levels``): sample the current
  level of a pre-generated pool, move up once the recent accuracy reaches ``promote_at``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reasonloop.config import CurriculumConfig
from reasonloop.curriculum.difficulty import bucketize
from reasonloop.curriculum.sampling import (arm_then_problem_sample, as_generator, nearest_sample, softmax,
                                            weighted_sample)
from reasonloop.curriculum.rules import (adarft_target, anneal_weights, decayed_counts, levels_step,
                                         sec_values, signal_scores, static_bucket_weights)
from reasonloop.errors import UserError
from reasonloop.stage_registry import get_stage, stage_kinds

__all__ = ["BatchStats", "Curriculum", "Scheduler", "Spec", "SCHEDULERS", "make_curriculum"]


@dataclass(frozen=True)
class BatchStats:
    """What one training step saw. ``rewards[j]`` and ``abs_advantages[j]`` belong to problem
    ``indices[j]`` (means over its group of G samples); ``step`` is the 0-based training step.
    SFT steps pass ``rewards=[]``: none/static/anneal only advance by ``step``."""

    indices: list[int]
    rewards: list[float]
    abs_advantages: list[float] | None = None
    step: int = 0
    samples: list[int] | None = None  # samples behind each mean reward (the group size); None: 1 each


@dataclass(frozen=True)
class Spec:
    """Everything a scheduler reads besides its state; fixed for a stage."""

    name: str
    difficulties: tuple[float, ...]  # normalised to [0, 1]; for `levels`, the level index of each problem
    bucket_of: tuple[int, ...]  # difficulty bucket (or level) of each problem, easiest 0
    total_steps: int
    cfg: CurriculumConfig
    window: int | None  # `levels`: rewards in the promotion window (None: the last batch's)
    where: str  # recipe path of the curriculum section, for error messages


@dataclass(frozen=True)
class Scheduler:
    """The pure functions behind one ``CurriculumConfig.scheduler`` value."""

    init: Callable[[Spec], dict]
    sample: Callable[[Spec, dict, int, np.random.Generator], list[int]]
    update: Callable[[Spec, dict, BatchStats], dict]
    log: Callable[[Spec, dict], dict[str, float]]
    needs: str = ""  # "", "rewards" or "advantages": what the loop must be able to supply


def _progress(spec: Spec, state: dict) -> float:
    return min(1.0, state["step"] / spec.total_steps)


def _stepped(spec: Spec, state: dict, stats: BatchStats, **changes) -> dict:
    return {**state, "step": stats.step + 1, **changes}


# --------------------------------------------------------------------------- none / static / anneal


def _uniform_weights(spec: Spec, state: dict) -> list[float]:
    return [1.0] * len(spec.difficulties)


def _static_weights(spec: Spec, state: dict) -> list[float]:
    present = sorted(set(spec.bucket_of))  # empty buckets are skipped, so bucket 0 of K' is never empty
    rank = {b: j for j, b in enumerate(present)}
    per_bucket = static_bucket_weights(len(present), _progress(spec, state), spec.cfg.pacing)
    return [per_bucket[rank[b]] for b in spec.bucket_of]


def _anneal_weights(spec: Spec, state: dict) -> list[float]:
    return anneal_weights(spec.difficulties, _progress(spec, state))


def _weighted(weights_of: Callable[[Spec, dict], list[float]]):
    def sample(spec: Spec, state: dict, k: int, gen: np.random.Generator) -> list[int]:
        return weighted_sample(weights_of(spec, state), k, gen)
    return sample


def _init_step(spec: Spec) -> dict:
    return {"step": 0}


def _update_step(spec: Spec, state: dict, stats: BatchStats) -> dict:
    return _stepped(spec, state, stats)


def _log_progress(spec: Spec, state: dict) -> dict[str, float]:
    out = {"curriculum/progress": _progress(spec, state)}
    if spec.name == "static":
        present = len(set(spec.bucket_of))
        out["curriculum/open_buckets"] = sum(
            static_bucket_weights(present, _progress(spec, state), spec.cfg.pacing))
    return out


# --------------------------------------------------------------------------- adarft


def _adarft_init(spec: Spec) -> dict:
    # Start at the easiest problems: the curriculum then climbs as rewards exceed the target.
    return {"step": 0, "target": min(spec.difficulties), "reward": None}


def _adarft_sample(spec: Spec, state: dict, k: int, gen: np.random.Generator) -> list[int]:
    return nearest_sample(spec.difficulties, state["target"], k, gen)


def _adarft_update(spec: Spec, state: dict, stats: BatchStats) -> dict:
    reward = sum(stats.rewards) / len(stats.rewards)
    target = adarft_target(state["target"], reward, spec.cfg.target_reward, spec.cfg.step_size,
                           min(spec.difficulties), max(spec.difficulties))
    return _stepped(spec, state, stats, target=target, reward=reward)


def _adarft_log(spec: Spec, state: dict) -> dict[str, float]:
    out = {"curriculum/target_difficulty": state["target"]}
    if state["reward"] is not None:
        out["curriculum/batch_reward"] = state["reward"]
    return out


# --------------------------------------------------------------------------- sec


def _sec_arm_probs(spec: Spec, values: list[float]) -> list[float]:
    present = set(spec.bucket_of)
    arms = sorted(present)
    probs = softmax([values[a] for a in arms], spec.cfg.temperature)
    out = [0.0] * len(values)
    for a, p in zip(arms, probs):
        out[a] = p
    return out


def _sec_init(spec: Spec) -> dict:
    return {"step": 0, "values": [0.0] * spec.cfg.buckets}


def _sec_sample(spec: Spec, state: dict, k: int, gen: np.random.Generator) -> list[int]:
    pools: list[list[int]] = [[] for _ in range(spec.cfg.buckets)]
    for i, b in enumerate(spec.bucket_of):
        pools[b].append(i)
    return arm_then_problem_sample(pools, _sec_arm_probs(spec, state["values"]), k, gen)


def _sec_update(spec: Spec, state: dict, stats: BatchStats) -> dict:
    if stats.abs_advantages is None:
        raise ValueError("the sec curriculum needs BatchStats.abs_advantages (mean |advantage| per problem)")
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for i, adv in zip(stats.indices, stats.abs_advantages):
        arm = spec.bucket_of[i]
        sums[arm] = sums.get(arm, 0.0) + abs(float(adv))
        counts[arm] = counts.get(arm, 0) + 1
    arm_rewards = {a: sums[a] / counts[a] for a in sums}
    return _stepped(spec, state, stats, values=sec_values(state["values"], arm_rewards, spec.cfg.alpha))


def _sec_log(spec: Spec, state: dict) -> dict[str, float]:
    out = {f"curriculum/arm{a}": v for a, v in enumerate(state["values"])}
    out.update({f"curriculum/p_arm{a}": p for a, p in enumerate(_sec_arm_probs(spec, state["values"]))})
    return out


# --------------------------------------------------------------------------- signal


def _signal_init(spec: Spec) -> dict:
    return {"step": 0, "successes": [0.0] * len(spec.difficulties), "failures": [0.0] * len(spec.difficulties)}


def _signal_sample(spec: Spec, state: dict, k: int, gen: np.random.Generator) -> list[int]:
    scores = signal_scores(state["successes"], state["failures"])
    return weighted_sample(softmax(scores, spec.cfg.temperature), k, gen)


def _signal_update(spec: Spec, state: dict, stats: BatchStats) -> dict:
    wins: dict[int, float] = {}
    losses: dict[int, float] = {}
    samples = stats.samples or [1] * len(stats.indices)
    for i, r, n in zip(stats.indices, stats.rewards, samples):
        p = min(1.0, max(0.0, float(r)))  # a mean reward in [0, 1] read as the group's pass rate
        wins[i] = wins.get(i, 0.0) + p * n
        losses[i] = losses.get(i, 0.0) + (1.0 - p) * n
    return _stepped(spec, state, stats, successes=decayed_counts(state["successes"], spec.cfg.decay, wins),
                    failures=decayed_counts(state["failures"], spec.cfg.decay, losses))


def _signal_log(spec: Spec, state: dict) -> dict[str, float]:
    n, scores = len(spec.difficulties), signal_scores(state["successes"], state["failures"])
    return {"curriculum/seen_share": sum(s + f > 1e-9 for s, f in zip(state["successes"], state["failures"])) / n,
            "curriculum/split_share": sum(v > 1.0 for v in scores) / n}


# --------------------------------------------------------------------------- levels


def _levels_init(spec: Spec) -> dict:
    return {"step": 0, "level": 0, "window": []}


def _levels_sample(spec: Spec, state: dict, k: int, gen: np.random.Generator) -> list[int]:
    return weighted_sample([1.0 if b == state["level"] else 0.0 for b in spec.bucket_of], k, gen)


def _levels_update(spec: Spec, state: dict, stats: BatchStats) -> dict:
    current = [float(r) for i, r in zip(stats.indices, stats.rewards) if spec.bucket_of[i] == state["level"]]
    level, window = levels_step(state["level"], list(state["window"]), current, spec.window,
                                spec.cfg.promote_at, max(spec.bucket_of))
    return _stepped(spec, state, stats, level=level, window=window)


def _levels_log(spec: Spec, state: dict) -> dict[str, float]:
    out = {"curriculum/level": float(state["level"])}
    if state["window"]:
        out["curriculum/level_accuracy"] = sum(state["window"]) / len(state["window"])
    return out


SCHEDULERS: dict[str, Scheduler] = {
    "none": Scheduler(_init_step, _weighted(_uniform_weights), _update_step, _log_progress),
    "static": Scheduler(_init_step, _weighted(_static_weights), _update_step, _log_progress),
    "anneal": Scheduler(_init_step, _weighted(_anneal_weights), _update_step, _log_progress),
    "adarft": Scheduler(_adarft_init, _adarft_sample, _adarft_update, _adarft_log, needs="rewards"),
    "sec": Scheduler(_sec_init, _sec_sample, _sec_update, _sec_log, needs="advantages"),
    "signal": Scheduler(_signal_init, _signal_sample, _signal_update, _signal_log, needs="rewards"),
    "levels": Scheduler(_levels_init, _levels_sample, _levels_update, _levels_log, needs="rewards"),
}


# --------------------------------------------------------------------------- the object the loops hold


@dataclass(frozen=True)
class Curriculum:
    """A scheduler bound to one stage's problems. Methods are pure: state in, new value out."""

    spec: Spec
    scheduler: Scheduler

    @property
    def bucket_of(self) -> tuple[int, ...]:
        """Level of each problem, for ``accuracy_by_level`` logs."""
        return self.spec.bucket_of

    def init_state(self) -> dict:
        return {"scheduler": self.spec.name, "problems": len(self.spec.difficulties), **self.scheduler.init(self.spec)}

    def sample(self, state: dict, batch_size: int, rng: np.random.Generator | random.Random) -> list[int]:
        """``batch_size`` problem indices; distinct whenever enough problems are eligible."""
        self._check_state(state)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self.scheduler.sample(self.spec, state, batch_size, as_generator(rng))

    def update(self, state: dict, stats: BatchStats) -> dict:
        """The state after a batch; ``state`` itself is left unchanged."""
        self._check_state(state)
        self._check_stats(stats)
        return self.scheduler.update(self.spec, state, stats)

    def log(self, state: dict) -> dict[str, float]:
        self._check_state(state)
        return self.scheduler.log(self.spec, state)

    def _check_state(self, state: dict) -> None:
        # A checkpoint from another recipe (scheduler, task pool) would silently pick wrong problems.
        if state.get("scheduler") != self.spec.name:
            raise UserError(f"{self.spec.where}.scheduler: the checkpoint's curriculum state is for "
                            f"{state.get('scheduler')!r} but the recipe asks for {self.spec.name!r}; "
                            "resume with the recipe the run started with, or start the stage afresh")
        if state.get("problems") != len(self.spec.difficulties):
            raise UserError(f"{self.spec.where}: the checkpoint's curriculum state covers {state.get('problems')} "
                            f"problems but the task now has {len(self.spec.difficulties)}; the task settings "
                            "changed since the checkpoint")
        if self.spec.name == "sec" and len(state["values"]) != self.spec.cfg.buckets:
            raise UserError(f"{self.spec.where}.buckets: the checkpoint's curriculum has {len(state['values'])} "
                            f"arms but the recipe asks for {self.spec.cfg.buckets}")

    def _check_stats(self, stats: BatchStats) -> None:
        n, m = len(self.spec.difficulties), len(stats.indices)
        # SFT steps have no rewards: schedulers that do not steer by them accept an empty list.
        if (self.scheduler.needs or stats.rewards) and (m == 0 or len(stats.rewards) != m):
            raise ValueError(f"the {self.spec.name} curriculum needs one reward per index, got {m} indices "
                             f"and {len(stats.rewards)} rewards")
        if stats.abs_advantages is not None and len(stats.abs_advantages) != m:
            raise ValueError(f"BatchStats: {m} indices but {len(stats.abs_advantages)} abs_advantages")
        if stats.samples is not None and (len(stats.samples) != m or any(n < 1 for n in stats.samples)):
            raise ValueError(f"BatchStats.samples must be one count >= 1 per index, got {stats.samples}")
        if any(not 0 <= i < n for i in stats.indices):
            raise ValueError(f"BatchStats.indices must lie in [0, {n}), got {stats.indices}")
        if any(not math.isfinite(r) for r in stats.rewards):
            raise ValueError(f"BatchStats.rewards must be finite, got {stats.rewards}")
        if stats.step < 0:
            raise ValueError(f"BatchStats.step must be >= 0, got {stats.step}")


def _level_buckets(levels: list[float], where: str) -> tuple[int, ...]:
    ints = [int(v) for v in levels]
    if any(v != i or i < 0 for v, i in zip(levels, ints)):
        raise ValueError("for the levels curriculum, difficulties must be level indices 0, 1, 2, ...")
    missing = sorted(set(range(max(ints) + 1)) - set(ints))
    if missing:
        raise UserError(f"{where}.scheduler: the task's problem pool has no problems at level(s) {missing}; "
                        "every level in task.gym.levels needs problems")
    return tuple(ints)


def _curriculum_signals(stage_kind: str) -> frozenset[str]:
    takes = [k for k in stage_kinds() if get_stage(k).curriculum_signals is not None]
    if stage_kind not in takes:
        raise ValueError(f"stage_kind must be one of {tuple(takes)}, got {stage_kind!r}")
    return get_stage(stage_kind).curriculum_signals


def make_curriculum(cfg: CurriculumConfig, difficulties: list[float], total_steps: int, *,
                    stage_kind: str, has_levels: bool = False, window: int | None = None,
                    where: str = "curriculum") -> Curriculum:
    """Bind ``cfg.scheduler`` to a stage's problems.

    ``difficulties``: normalised difficulty (``difficulty.normalise``) of each problem; for
    ``levels``, the level index of each problem of a pool pre-generated across all levels.
    ``total_steps``: the stage's training steps (the pacing / annealing length).
    ``stage_kind``: a registered stage kind that takes a curriculum; its ``curriculum_signals``
    (``stage_registry``) say what it can steer by: ``sft`` has no rewards, so ``adarft``, ``sec`` and
    ``levels`` are refused there; ``sec`` also needs advantages, which only ``rl`` computes.
    ``has_levels``: whether the task declares levels (``task.gym.levels``).
    ``window``: ``levels`` promotion window in answered problems (None: the last batch).
    ``where``: recipe path of the curriculum section, e.g. ``stages[2].curriculum``.
    """
    signals = _curriculum_signals(stage_kind)
    if cfg.scheduler not in SCHEDULERS:
        raise UserError(f"{where}.scheduler: expected one of {', '.join(SCHEDULERS)}, got {cfg.scheduler!r}")
    scheduler = SCHEDULERS[cfg.scheduler]
    if scheduler.needs and "rewards" not in signals:
        raise UserError(f"{where}.scheduler: {cfg.scheduler!r} steers by rewards, which an {stage_kind} stage does not "
                        "produce; use none, static or anneal here (or this scheduler in an rl stage)")
    if scheduler.needs == "advantages" and "advantages" not in signals:
        raise UserError(f"{where}.scheduler: 'sec' scores arms by RL advantages, which a {stage_kind} stage "
                        "does not compute; use it in an rl stage")
    if cfg.scheduler == "levels" and not has_levels:
        raise UserError(f"{where}.scheduler: 'levels' needs a task with difficulty levels (task.source: gym "
                        "with task.gym.levels); this task has none, so use none, static, anneal, adarft or sec")
    if not difficulties:
        raise ValueError("a curriculum needs at least one problem")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if cfg.scheduler == "levels":
        buckets = _level_buckets(list(difficulties), where)
    else:
        buckets = tuple(bucketize(difficulties, max(cfg.buckets, 1)))
    spec = Spec(cfg.scheduler, tuple(float(d) for d in difficulties), buckets, total_steps, cfg, window, where)
    return Curriculum(spec, scheduler)
