import math

import pytest

from reasonloop.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval


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
