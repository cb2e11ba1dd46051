"""RFT's curriculum: how many samples each training question gets, by its measured pass rate.

An RFT round cannot steer *which* questions come next (it samples all of them), so its curriculum is
the sampling budget: DART-Math ("Difficulty-Aware Rejection Tuning for Mathematical Problem-Solving",
Tong et al. 2024) keeps sampling the questions the model fails until they have enough correct samples.
A recipe picks it with an rft stage's `allocation: uniform | prop2diff` (`fixed`: k each, no curriculum);
`stages/rft_data.allocate_samples` runs the rounds of requests. The order the kept paths train in is the
SFT curriculum (`train.curriculum`, `sft_order`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from reasonloop.errors import UserError

__all__ = ["dart_allocation"]


def dart_allocation(pass_counts: Sequence[int], tries: Sequence[int], min_correct: int, budget: int,
                    mode: Literal["uniform", "prop2diff"] = "uniform") -> dict[int, int]:
    """How many more samples each question gets in the next round (DART-Math).

    A question stops when it has its target number of correct samples or has used ``budget``
    samples. Targets:
    - ``uniform`` ("DARS-Uniform"): ``min_correct`` for every question.
    - ``prop2diff`` ("DARS-Prop2Diff"): proportional to difficulty, the fail rate so far
      ``d_i = 1 - correct_i / tries_i`` (1 when untried): ``ceil(min_correct * d_i / max_j d_j)``,
      at least 1. The hardest question gets ``min_correct``; easy ones stop sooner.
    The request for a question still short of its target is the expected number of samples to
    reach it at the pass rate seen so far, ``ceil(missing * tries / correct)``; with no correct
    sample yet it doubles its tries (geometric search for a rare success); with no tries yet it is
    the target. Requests are clipped to ``[1, budget - tries]``. Questions that need nothing are
    left out of the result.
    """
    if len(pass_counts) != len(tries):
        raise ValueError(f"{len(pass_counts)} pass counts for {len(tries)} try counts")
    if min_correct < 1:
        raise UserError(f"min_correct must be >= 1, got {min_correct}")
    if budget < 1:
        raise UserError(f"budget must be >= 1, got {budget}")
    if mode not in ("uniform", "prop2diff"):
        raise ValueError(f"unknown allocation {mode!r}; use uniform or prop2diff")
    for i, (c, t) in enumerate(zip(pass_counts, tries)):
        if not 0 <= c <= t:
            raise ValueError(f"question {i}: {c} correct out of {t} tries")
    fail = [1.0 - c / t if t else 1.0 for c, t in zip(pass_counts, tries)]
    hardest = max(fail, default=0.0)
    out = {}
    for i, (c, t) in enumerate(zip(pass_counts, tries)):
        if mode == "uniform":
            target = min_correct
        else:
            target = max(1, math.ceil(min_correct * fail[i] / hardest)) if hardest > 0 else 1
        if c >= target or t >= budget:
            continue
        if t == 0:
            want = target
        elif c == 0:
            want = t
        else:
            want = math.ceil((target - c) * t / c)
        out[i] = max(1, min(want, budget - t))
    return out
