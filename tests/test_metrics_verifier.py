"""Verifier selection statistics against hand-computed values: rerank, weighted vote, AUC, calibration."""

import math

import pytest

from reasonloop.metrics import (calibration_bins, majority_vote, rerank_pick, roc_auc, sigmoid,
                                weighted_vote)


def test_rerank_picks_the_highest_score_and_the_first_of_a_tie():
    assert rerank_pick([0.1, 0.9, 0.3]) == 1
    assert rerank_pick([0.5, 0.9, 0.9]) == 1  # tie between 1 and 2: the earlier sample
    assert rerank_pick([-3.0]) == 0  # one sample: it is the pick, whatever its score


@pytest.mark.parametrize("scores, message", [([], "no samples"), ([0.1, math.nan], "finite")])
def test_rerank_refuses_bad_scores(scores, message):
    with pytest.raises(ValueError, match=message):
        rerank_pick(scores)


def test_weighted_vote_can_overturn_the_majority():
    # counts: 5 twice, 3 once; weights: 3 -> 0.9, 5 -> 0.3 + 0.4 = 0.7
    assert majority_vote(["3", "5", "5"]) == "5"
    assert weighted_vote(["3", "5", "5"], [0.9, 0.3, 0.4]) == "3"


def test_weighted_vote_ties_none_answers_and_one_sample():
    assert weighted_vote(["3", "5"], [0.5, 0.5]) == "3"  # tie: the answer seen first
    assert weighted_vote([None, "4"], [0.99, 0.1]) == "4"  # no answer casts no vote however sure
    assert weighted_vote([None, None], [0.5, 0.5]) is None
    assert weighted_vote(["7"], [0.0]) == "7"  # weight 0 still a vote when nothing else is
    answers = ["1", "2", "2", "1", "3"]
    assert weighted_vote(answers, [0.4] * 5) == majority_vote(answers)  # equal weights: plain majority


@pytest.mark.parametrize("answers, weights, message", [
    (["1", "2"], [0.5], "1 scores for 2 samples"), (["1"], [-0.1], ">= 0"), (["1"], [math.inf], "finite")])
def test_weighted_vote_refuses_bad_weights(answers, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_vote(answers, weights)


def test_auc_by_hand():
    # correct: 0.9, 0.3; wrong: 0.8, 0.1. Pairs (correct above wrong): 0.9>0.8, 0.9>0.1, 0.3>0.1; 0.3<0.8 -> 3/4
    assert roc_auc([0.9, 0.8, 0.3, 0.1], [True, False, True, False]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([0.2, 0.7, 0.7], [False, True, False]) == pytest.approx(0.75)  # 1 + 1/2 over 2 pairs
    assert roc_auc([0.1, 0.2], [False, False]) is None  # all wrong: AUC undefined


def test_calibration_bins_by_hand():
    got = calibration_bins([0.05, 0.15, 0.12, 1.0], [False, True, False, True], bins=10)
    assert [b["bin"] for b in got] == [0, 1, 9] and [b["count"] for b in got] == [1, 2, 1]
    assert got[1]["mean_prob"] == pytest.approx(0.135) and got[1]["correct"] == 0.5
    assert got[2]["correct"] == 1.0  # p = 1.0 lands in the last bin


def test_sigmoid_is_stable():
    assert sigmoid(0.0) == 0.5 and sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2)))
