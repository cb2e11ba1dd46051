import math

import pytest

from reasonloop.metrics import (majority_vote, mcnemar_exact_p, mean_interval, paired_comparison,
                                paired_delta_interval, pass_at_k, wilson_interval)


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - math.comb(3, 3) / math.comb(5, 3))
    assert pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError, match="n >= k"):
        pass_at_k(2, 1, 4)


def test_majority_vote_ties_and_none():
    assert majority_vote([None, None]) is None
    assert majority_vote([3, 5, 5, 3]) == 3  # tie: first seen
    assert majority_vote([None, 2, 7, 7]) == 7


def test_wilson_interval_hand_value():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert wilson_interval(0, 20)[0] == 0.0


def test_mean_interval_t_quantile():
    mean, (lo, hi) = mean_interval([0.2, 0.4])
    # sd = 0.1414, t(1) = 12.706, half = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert mean == pytest.approx(0.3) and hi - mean == pytest.approx(1.2706, abs=1e-3)
    assert mean_interval([0.5]) == (0.5, (0.5, 0.5))


def test_mean_interval_clipped_to_bounds():
    # the same two seeds as above: mean 0.3, half-width 1.2706, so [-0.97, 1.57] unclipped
    mean, (lo, hi) = mean_interval([0.2, 0.4], bounds=(0.0, 1.0))
    assert mean == pytest.approx(0.3) and (lo, hi) == (0.0, 1.0)
    # an interval inside the bounds is untouched: sd 0.01414, half 12.706 * 0.01414 / sqrt(2) = 0.1271
    mean, (lo, hi) = mean_interval([0.49, 0.51], bounds=(0.0, 1.0))
    assert (lo, hi) == (pytest.approx(0.5 - 0.1271, abs=1e-4), pytest.approx(0.5 + 0.1271, abs=1e-4))


def test_mcnemar_exact_p_hand_values():
    # 5 won, 1 lost: 6 discordant coins; P(<= 1 loss) = (C(6,0) + C(6,1)) / 2^6 = 7/64, two-sided 14/64
    assert mcnemar_exact_p(5, 1) == 14 / 64 == mcnemar_exact_p(1, 5)
    # 9 won, 1 lost: 2 * (1 + 10) / 1024 = 0.0215 (< 0.05: the stage raises accuracy); 8-2: 2 * 56 / 1024
    assert mcnemar_exact_p(9, 1) == 22 / 1024 and mcnemar_exact_p(8, 2) == 112 / 1024
    assert mcnemar_exact_p(10, 0) == 2 / 1024
    # 3-3: 2 * (1 + 6 + 15 + 20) / 64 = 84/64, capped at 1; nothing discordant: no evidence at all
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    # The p-values recorded in FINDINGS.md (computed elsewhere) for the default recipe's stages
    for wins, losses, p in ((82, 33, 6e-6), (26, 23, 0.78), (44, 34, 0.31), (46, 41, 0.67), (55, 53, 0.92)):
        assert mcnemar_exact_p(wins, losses) == pytest.approx(p, abs=0.005 if p > 1e-3 else 1e-6)


def test_paired_delta_interval_hand_value():
    # 20 problems: 10 right in both, 4 wrong in both, 5 won, 1 lost. Before 11/20 = 0.55, after 15/20 = 0.75.
    # Wilson(11, 20) = (0.34208, 0.74181); Wilson(15, 20) = (0.53129, 0.88814).
    # phi: ad - bc = 10*4 - 5*1 = 35 > n/2 = 10, corrected 35 - 10 = 25, / sqrt(11*9*15*5) = 25/86.168 = 0.29013
    # lower = 0.2 - sqrt(0.21871^2 + 0.19181^2 - 2*0.29013*0.21871*0.19181) = 0.2 - 0.24552 = -0.04552
    # upper = 0.2 + sqrt(0.13814^2 + 0.20792^2 - 2*0.29013*0.13814*0.20792) = 0.2 + 0.21365 = 0.41365
    lo, hi = paired_delta_interval(wins=5, losses=1, both_right=10, both_wrong=4)
    assert lo == pytest.approx(-0.04552, abs=2e-5) and hi == pytest.approx(0.41365, abs=2e-5)


def test_paired_delta_interval_nothing_changed_is_not_a_point():
    # 10 problems all right twice: Wilson(10, 10) = (0.72246, 1), phi = 0 (a margin is empty): +-0.27754
    lo, hi = paired_delta_interval(0, 0, 10, 0)
    assert (lo, hi) == (pytest.approx(-0.27754, abs=1e-5), pytest.approx(0.27754, abs=1e-5))
    assert paired_delta_interval(20, 0, 0, 0)[1] == 1.0  # clipped to the range of a difference


def test_paired_delta_interval_large_n_near_normal_interval():
    # 500 problems, 82 won, 33 lost (FINDINGS): mean paired difference 0.098, sd of the differences
    # sqrt((115/500 - 0.098^2) * 500/499) = 0.46995, half-width 1.96 * 0.46995 / sqrt(500) = 0.04119
    lo, hi = paired_delta_interval(82, 33, 107, 278)
    assert lo == pytest.approx(0.098 - 0.04119, abs=0.001) and hi == pytest.approx(0.098 + 0.04119, abs=0.001)


def test_paired_comparison_counts_on_common_problems():
    before = {"a": True, "b": False, "c": False, "d": True, "x": True}
    after = {"a": True, "b": True, "c": False, "d": False, "e": True}  # x only before, e only after
    out = paired_comparison(before, after)
    assert (out["n"], out["wins"], out["losses"], out["delta"]) == (4, 1, 1, 0.0)
    assert out["p_value"] == 1.0 and out["delta_ci95"][0] < 0 < out["delta_ci95"][1]
    assert paired_comparison({"a": True}, {"b": True}) is None
