"""Evaluation statistics as pure functions: pass@k, majority vote, intervals.

pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
Code"); maj@k is self-consistency (Wang et al. 2022). "A Sober Look at Progress in LM Reasoning"
(Hochlehnert et al. 2025) is why every number carries an interval.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Mapping, Sequence

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; normal beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws (without replacement) from n samples, c correct, is correct."""
    if k > n:
        raise ValueError(f"pass@k needs n >= k samples, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """Most frequent non-None answer; ties go to the answer seen first (deterministic)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and 1)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)
                  ) -> tuple[float, tuple[float, float]]:
    """Mean and 95% t-interval over seeds; a single value has a zero-width interval.

    ``bounds`` clips the interval to the quantity's range: over 2 seeds the t-interval of a rate
    (t = 12.7 at 1 degree of freedom) easily runs below 0 or above 1."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, (mean, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    half = t * sd / math.sqrt(n)
    return mean, (max(bounds[0], mean - half), min(bounds[1], mean + half))


def mcnemar_exact_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar test (McNemar 1947) of two evaluations on the same problems.

    Only discordant problems carry information: `wins` (right now, wrong before) and `losses` (the
    reverse). Under "no change" each discordant problem is a fair coin, so the p-value is the two-sided
    binomial test of min(wins, losses) out of wins + losses at p = 0.5 (1.0 with no discordant problem).
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers until this one division


def paired_delta_interval(wins: int, losses: int, both_right: int, both_wrong: int,
                          z: float = 1.96) -> tuple[float, float]:
    """95% interval of (accuracy after - accuracy before) on the same problems, Newcombe's method 10
    ("Improved confidence intervals for the difference between binomial proportions based on paired
    data", Stat. Med. 1998): the Wilson intervals of the two accuracies, squared and added, with the
    correlation of the paired table (its phi, continuity-corrected as Newcombe does) taken out.
    Unlike the normal interval of the mean paired difference it does not collapse to a point when no
    problem changed, and it stays inside [-1, 1]."""
    n = wins + losses + both_right + both_wrong
    if n == 0:
        return (0.0, 0.0)
    before, after = both_right + losses, both_right + wins  # problems right before / after
    p_b, p_a = before / n, after / n
    lb, ub = wilson_interval(before, n, z)
    la, ua = wilson_interval(after, n, z)
    margins = before * (n - before) * after * (n - after)
    cross = both_right * both_wrong - wins * losses
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    delta = p_a - p_b
    down = math.sqrt(max(0.0, (p_a - la) ** 2 + (ub - p_b) ** 2 - 2 * phi * (p_a - la) * (ub - p_b)))
    up = math.sqrt(max(0.0, (ua - p_a) ** 2 + (p_b - lb) ** 2 - 2 * phi * (ua - p_a) * (p_b - lb)))
    return (max(-1.0, delta - down), min(1.0, delta + up))


def paired_comparison(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict | None:
    """Greedy correctness of two evaluations paired by problem id, on the problems both saw (None if none).

    `wins`: problems right after and wrong before; `losses`: the reverse. `delta` is the difference in
    accuracy on the paired problems, `delta_ci95` its Newcombe interval, `p_value` the exact McNemar test.
    """
    common = [pid for pid in after if pid in before]
    if not common:
        return None
    wins = sum(bool(after[p]) and not before[p] for p in common)
    losses = sum(bool(before[p]) and not after[p] for p in common)
    both_right = sum(bool(after[p]) and bool(before[p]) for p in common)
    both_wrong = len(common) - wins - losses - both_right
    return {"n": len(common), "delta": (wins - losses) / len(common),
            "delta_ci95": list(paired_delta_interval(wins, losses, both_right, both_wrong)),
            "p_value": mcnemar_exact_p(wins, losses), "wins": wins, "losses": losses}


# --------------------------------------------------------------------------- verifier selection
# Cobbe et al. 2021 ("Training Verifiers to Solve Math Word Problems") rerank k samples by a trained
# verifier's score; weighted voting (Li et al. 2023, "Making Large Language Models Better Reasoners with
# Step-Aware Verifier"; ReFT 2024 reports both) sums the verifier's scores per answer instead of counting.


def _check_scores(scores: Sequence[float], n: int, what: str) -> None:
    if len(scores) != n:
        raise ValueError(f"{what}: {len(scores)} scores for {n} samples")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"{what}: scores must be finite, got {list(scores)}")


def rerank_pick(scores: Sequence[float]) -> int:
    """Index of the sample the verifier scores highest; a tie goes to the earliest sample (deterministic)."""
    if not scores:
        raise ValueError("rerank: no samples to choose from")
    _check_scores(scores, len(scores), "rerank")
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s == best)


def weighted_vote(answers: Sequence[Hashable | None], weights: Sequence[float]) -> Hashable | None:
    """The answer whose samples' weights sum highest (no answer casts no vote); ties go to the answer seen
    first, as in `majority_vote`. Weights are verifier probabilities (>= 0): with all weights equal this is
    the plain majority vote. None when no sample has an answer."""
    _check_scores(weights, len(answers), "weighted vote")
    if any(w < 0 for w in weights):
        raise ValueError(f"weighted vote: weights must be >= 0 (probabilities, not logits), got {list(weights)}")
    totals: dict[Hashable, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + weight
    if not totals:
        return None
    best = max(totals.values())
    return next(a for a in totals if totals[a] == best)  # dicts keep first-seen order


def sigmoid(x: float) -> float:
    """P(correct) from a verifier logit, without overflow for large |x|."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the probability that a random correct sample scores above a random wrong
    one, ties counting one half (Mann-Whitney U / (n_pos n_neg)). None when one class is absent."""
    _check_scores(scores, len(labels), "AUC")
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted(scores)
    # Mid-rank of each distinct score (1-based), so ties share the average rank.
    first: dict[float, int] = {}
    count = Counter(ranked)
    for i, s in enumerate(ranked):
        first.setdefault(s, i + 1)
    rank_sum = sum(first[s] + (count[s] - 1) / 2 for s in pos)
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def calibration_bins(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> list[dict]:
    """Reliability table: per equal-width probability bin that holds samples, its mean predicted
    probability, the share that was correct, and the count (bin i holds [i/bins, (i+1)/bins), 1.0 in the last)."""
    _check_scores(probs, len(labels), "calibration")
    groups: dict[int, list[tuple[float, bool]]] = {}
    for p, y in zip(probs, labels):
        groups.setdefault(min(bins - 1, max(0, int(p * bins))), []).append((p, bool(y)))
    return [{"bin": b, "mean_prob": sum(p for p, _ in g) / len(g), "correct": sum(y for _, y in g) / len(g),
             "count": len(g)} for b, g in sorted(groups.items())]
