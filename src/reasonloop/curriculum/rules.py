"""The update rules and weightings of the schedulers, as plain functions of numbers.

``schedulers.py`` binds them to a stage's problems and a JSON state; the tests check each
against hand-computed sequences.
"""

from __future__ import annotations

import math

__all__ = ["static_bucket_weights", "anneal_weights", "adarft_target", "sec_values", "levels_step",
           "signal_scores", "decayed_counts"]


def static_bucket_weights(n_buckets: int, progress: float, pacing: str) -> list[float]:
    """Sampling weight of each non-empty bucket (easiest first) at ``progress`` in [0, 1]; the
    competence-based pacing of Platanios et al., "Competence-based Curriculum Learning for Neural
    Machine Translation" (NAACL 2019), over buckets instead of a continuous difficulty.

    Competence x = 1 + K·c(p) with c = p (linear), sqrt(p) (root), floor(K·p)/K (step);
    bucket j gets clip(x - j, 0, 1): the first bucket is open from the start, each later one
    fades in (or, for `step`, opens at once), and all K are fully open from p = (K-1)/K
    (linear, step) or ((K-1)/K)^2 (root) on.
    """
    k = n_buckets
    if pacing == "linear":
        x = 1 + k * progress
    elif pacing == "root":
        x = 1 + k * math.sqrt(progress)
    elif pacing == "step":
        x = 1 + math.floor(k * progress)
    else:
        raise ValueError(f"unknown pacing {pacing!r}")
    return [min(1.0, max(0.0, x - j)) for j in range(k)]


def anneal_weights(difficulties: tuple[float, ...], progress: float) -> list[float]:
    """w_i = (1 - p)·(1 - d_i) + p: easy problems first, the hardest (d = 1) from weight 0 at the
    start to uniform at the end. The difficulty-based weights annealed linearly to 1 of MacAvaney
    et al., "Training Curricula for Open Domain Answer Re-Ranking" (SIGIR 2020), used here as
    sampling weights rather than loss weights."""
    return [(1 - progress) * (1 - d) + progress for d in difficulties]


def adarft_target(target: float, mean_reward: float, target_reward: float, step_size: float,
                  low: float, high: float) -> float:
    """AdaRFT's target update, T' = clip(T + eta·(R - beta), d_min, d_max) (Shi et al., "Efficient
    Reinforcement Finetuning via Adaptive Curriculum Learning", 2025).

    The paper moves by eta·tanh(alpha·(R - beta)); the recipe has one knob, `step_size` = eta per
    unit of reward error, i.e. the linear part of that rule (tanh(x) ≈ x for small x). With
    rewards in [0, 1] a batch moves the target by at most eta·max(beta, 1 - beta).
    """
    return min(high, max(low, target + step_size * (mean_reward - target_reward)))


def sec_values(values: list[float], arm_rewards: dict[int, float], alpha: float) -> list[float]:
    """TD(0) / exponential moving average: Q(a) <- (1 - alpha)·Q(a) + alpha·r(a) for each arm
    drawn in the batch; arms not drawn keep their value. The non-stationary bandit of Chen et al.,
    "Self-Evolving Curriculum for LLM Reasoning" (2025), where r(a) is the mean absolute advantage
    of arm a's problems in the last batch."""
    return [(1 - alpha) * q + alpha * arm_rewards[a] if a in arm_rewards else q for a, q in enumerate(values)]


def levels_step(level: int, window: list[float], rewards: list[float], size: int | None, promote_at: float,
                top: int) -> tuple[int, list[float]]:
    """Add this batch's rewards on the current level to the window (the last ``size`` kept; None:
    only this batch); promote when the window is full and its mean >= promote_at, emptying it."""
    window = rewards[:] if size is None else (window + rewards)[-size:]
    full = bool(window) and (size is None or len(window) >= size)
    if full and level < top and sum(window) / len(window) >= promote_at:
        return level + 1, []
    return level, window


def signal_scores(successes: list[float], failures: list[float]) -> list[float]:
    """Expected reward variance E[p(1 - p)] of each problem under a Beta(1 + s, 1 + f) posterior of its
    pass rate p, relative to an unseen problem's (Beta(1, 1): 1/6). For Beta(a, b) it is
    ab / ((a + b)(a + b + 1)). A group of G samples carries a GRPO/RLOO signal only when its rewards
    differ, which is likely where p(1 - p) is large: a problem that split its last group scores above 1,
    an unseen one 1, one solved (or failed) by every sample below 1."""
    out = []
    for s, f in zip(successes, failures):
        a, b = 1.0 + s, 1.0 + f
        out.append(6.0 * a * b / ((a + b) * (a + b + 1.0)))
    return out


def decayed_counts(counts: list[float], decay: float, seen: dict[int, float]) -> list[float]:
    """Every count times ``decay`` (older outcomes say less about a policy that has moved since), plus
    this batch's outcomes ``seen`` (problem index -> successes or failures)."""
    return [c * decay + seen.get(i, 0.0) for i, c in enumerate(counts)]
