"""Seeded draws of problem indices shared by the schedulers: weighted, nearest-to-a-target, bandit.

All take a ``numpy.random.Generator``; ``as_generator`` also accepts a seeded ``random.Random``.
Within one batch a problem repeats only when fewer problems are eligible than the batch asks for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

__all__ = ["as_generator", "weighted_sample", "nearest_sample", "softmax", "arm_then_problem_sample"]


def as_generator(rng: np.random.Generator | random.Random) -> np.random.Generator:
    """The caller's seeded generator; a ``random.Random`` seeds a numpy one from 64 of its bits,
    so the same Random state always gives the same draws."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    raise TypeError(f"rng must be numpy.random.Generator or random.Random, got {type(rng).__name__}")


def weighted_sample(weights: Sequence[float], k: int, gen: np.random.Generator) -> list[int]:
    """``k`` indices drawn in proportion to ``weights`` (sequentially, without replacement while
    problems with weight > 0 remain; then with replacement to fill the batch)."""
    w = np.asarray(weights, dtype=np.float64)  # [N]
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, >= 0, and not all zero")
    p = w / w.sum()
    eligible = int(np.count_nonzero(w))
    if k <= eligible:
        return [int(i) for i in gen.choice(w.size, size=k, replace=False, p=p)]
    first = gen.permutation(np.flatnonzero(w))  # every eligible problem once, in random order
    rest = gen.choice(w.size, size=k - eligible, replace=True, p=p)
    return [int(i) for i in first] + [int(i) for i in rest]


def nearest_sample(values: Sequence[float], target: float, k: int, gen: np.random.Generator) -> list[int]:
    """The ``k`` problems whose value is closest to ``target`` (AdaRFT's batch selection); ties in
    distance are broken at random so problems of equal difficulty take turns across batches."""
    v = np.asarray(values, dtype=np.float64)  # [N]
    order = gen.permutation(v.size)  # random tie-break: a stable sort keeps this order among ties
    ranked = order[np.argsort(np.abs(v[order] - target), kind="stable")]
    return [int(ranked[j % v.size]) for j in range(k)]


def softmax(values: Sequence[float], temperature: float) -> list[float]:
    """Boltzmann probabilities exp(v / t) / sum exp(v / t), shifted by the max for stability."""
    top = max(values)
    e = [math.exp((v - top) / temperature) for v in values]
    total = sum(e)
    return [x / total for x in e]


def arm_then_problem_sample(pools: Sequence[Sequence[int]], probs: Sequence[float], k: int,
                            gen: np.random.Generator) -> list[int]:
    """For each slot pick an arm by ``probs`` (renormalised over arms with problems left), then a
    problem of that arm uniformly; a pool is refilled only once every pool is used up."""
    left = [list(p) for p in pools]
    out: list[int] = []
    for _ in range(k):
        avail = [a for a, pool in enumerate(left) if pool and probs[a] > 0]
        if not avail:  # the batch is larger than the eligible problems: start over
            left = [list(p) for p in pools]
            avail = [a for a, pool in enumerate(left) if pool and probs[a] > 0]
        p = np.asarray([probs[a] for a in avail], dtype=np.float64)
        arm = avail[int(gen.choice(len(avail), p=p / p.sum()))]
        pool = left[arm]
        j = int(gen.integers(len(pool)))
        pool[j], pool[-1] = pool[-1], pool[j]  # swap-pop: O(1) removal, order does not matter
        out.append(pool.pop())
    return out
