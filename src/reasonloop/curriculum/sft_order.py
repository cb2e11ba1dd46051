"""SFT's curriculum: the order of an epoch's examples by their difficulty, as pure functions.

An SFT epoch trains on every example once; a curriculum there changes *when* an example is seen, never
*whether*, so an arm with a curriculum and one without train on the same examples for the same steps
(the comparison `recipes/sft-objectives.yaml` and ablations rely on).

- ``static``: easy to hard (Bengio et al., "Curriculum Learning", ICML 2009); examples of equal
  difficulty in a seeded random order, so an epoch is not the task file's order.
- ``anneal``: each next example drawn from those left, with the weights of ``rules.anneal_weights``
  at the epoch's progress: w_i = (1 - p)(1 - d_i) + p, from favouring easy examples (p = 0, the hardest
  at weight 0) to uniform (p = 1) (MacAvaney et al., "Training Curricula for Open Domain Answer
  Re-Ranking", SIGIR 2020, whose difficulty weights anneal to 1). Drawn without replacement: easy
  examples come early on average, but unlike ``static`` hard ones can come early and easy ones late.

Difficulties are the normalised ones of ``difficulty.estimate_difficulty`` (in [0, 1], higher = harder).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["static_order", "anneal_order", "SFT_ORDERS", "epoch_order"]


def _check(difficulties: Sequence[float]) -> None:
    bad = [d for d in difficulties if not 0.0 <= d <= 1.0]  # also catches NaN
    if bad:
        raise ValueError(f"difficulties must be normalised into [0, 1], got {bad[0]!r}")


def _seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch  # the same per-(seed, epoch) stream as the shuffled order of sft_data


def static_order(difficulties: Sequence[float], seed: int, epoch: int) -> list[int]:
    """Example indices from easiest to hardest; ties in a random order fixed by (seed, epoch)."""
    _check(difficulties)
    order = list(range(len(difficulties)))
    random.Random(_seed(seed, epoch)).shuffle(order)
    return sorted(order, key=lambda i: difficulties[i])  # stable: ties keep the shuffled order


def anneal_order(difficulties: Sequence[float], seed: int, epoch: int) -> list[int]:
    """A permutation drawn slot by slot: slot j (progress p = j / (n - 1)) takes one of the examples left with
    probability proportional to (1 - p)(1 - d_i) + p. When every example left weighs 0 (only the hardest
    remain at p = 0, possible only for n = 1), the draw is uniform."""
    _check(difficulties)
    n = len(difficulties)
    d = np.asarray(difficulties, dtype=np.float64)  # [n]
    gen = np.random.default_rng(_seed(seed, epoch))
    left = np.ones(n, dtype=bool)  # [n]: not yet placed
    out: list[int] = []
    for j in range(n):
        progress = j / (n - 1) if n > 1 else 1.0
        w = ((1 - progress) * (1 - d) + progress) * left  # [n]: rules.anneal_weights, vectorised, over those left
        if w.sum() <= 0:
            w = left.astype(np.float64)
        i = int(gen.choice(n, p=w / w.sum()))
        left[i] = False
        out.append(i)
    return out


SFT_ORDERS: dict[str, Callable[[Sequence[float], int, int], list[int]]] = {
    "static": static_order,
    "anneal": anneal_order,
}


def epoch_order(name: str, difficulties: Sequence[float], seed: int) -> Callable[[int], list[int]] | None:
    """The SFT loop's `order_fn(epoch)` for curriculum ``name``; None for ``none`` (the loop's own shuffle)."""
    if name == "none":
        return None
    if name not in SFT_ORDERS:
        raise ValueError(f"unknown SFT order {name!r}; expected none, {', '.join(SFT_ORDERS)}")
    order = SFT_ORDERS[name]
    frozen = tuple(float(x) for x in difficulties)
    return lambda epoch: order(frozen, seed, epoch)
