"""rerank@k and weighted maj@k per problem and over problems, against hand-computed values."""

import pytest

from reasonloop.stages.verifier_eval import rerank_is_correct, verifier_summary, weighted_majority_is_correct


def test_rerank_takes_the_top_scored_sample():
    assert rerank_is_correct([0.2, 1.5, -0.3], [False, True, False])
    assert not rerank_is_correct([2.0, 1.5], [False, True])  # the verifier prefers the wrong one
    assert rerank_is_correct([1.0, 1.0], [True, False])  # tie: the earlier sample
    assert not rerank_is_correct([3.0, -3.0], [False, False])  # all wrong: nothing to pick
    assert rerank_is_correct([-5.0], [True])  # one sample: top-1 of the samples


def test_weighted_vote_groups_answers_as_maj_at_k_does():
    # "18" and "18 dollars" are one answer (canonical_answer): 0.2 + 0.3 = 0.5 against 0.45 for "20"
    assert weighted_majority_is_correct(["18", "20", "18 dollars"], [True, False, True], [0.2, 0.45, 0.3])
    # one confident sample outweighs two doubtful ones
    assert not weighted_majority_is_correct(["18", "20", "18"], [True, False, True], [0.1, 0.9, 0.1])
    assert not weighted_majority_is_correct([None, None], [False, False], [0.9, 0.9])  # no answer: no vote
    assert not weighted_majority_is_correct(["3", "4"], [False, False], [0.9, 0.1])  # all wrong
    assert weighted_majority_is_correct(["3", "4"], [True, False], [0.5, 0.5])  # tie: first seen


def test_weighted_vote_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 answers, 2 verdicts and 1 weights"):
        weighted_majority_is_correct(["1", "2"], [True, False], [0.5])


def test_summary_rates_intervals_and_pairing_by_hand():
    top1 = {"a": True, "b": False, "c": False, "d": False}
    maj = {"a": True, "b": True, "c": False, "d": False}
    rerank = {"a": True, "b": True, "c": True, "d": False}
    weighted = {"a": False, "b": True, "c": False, "d": False}
    out = verifier_summary([rerank], [weighted], maj, top1)
    assert out["rerank_k"] == 0.75 and out["weighted_maj_k"] == 0.25
    lo, hi = out["rerank_k_ci95"]  # one seed: Wilson over the 4 problems
    assert lo < 0.75 < hi
    vs_top1 = out["verifier_paired"]["rerank_vs_top1"]
    assert (vs_top1["wins"], vs_top1["losses"], vs_top1["delta"]) == (2, 0, 0.5)
    assert vs_top1["p_value"] == pytest.approx(0.5)  # two discordant problems, both won: 2 * (1/2)^2
    vs_maj = out["verifier_paired"]["weighted_vs_maj"]
    assert (vs_maj["wins"], vs_maj["losses"]) == (0, 1)


def test_summary_over_seeds_is_a_t_interval():
    one = {"a": True, "b": False}
    two = {"a": True, "b": True}
    out = verifier_summary([one, two], [one, two], one, one)
    assert out["rerank_k"] == 0.75 and out["rerank_k_per_seed"] == [0.5, 1.0]
    assert out["rerank_k_ci95"] == [0.0, 1.0]  # t = 12.7 at 1 degree of freedom, clipped to [0, 1]
