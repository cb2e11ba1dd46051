"""Schedulers bound to problems: hand-computed state sequences, sampled distributions against the
state, exact resume through JSON, and the errors a recipe author sees."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest

from reasonloop.config import CurriculumConfig
from reasonloop.curriculum import SCHEDULERS, BatchStats, make_curriculum, normalise
from reasonloop.errors import UserError

# 40 problems, difficulty i/39; 4 equal-width buckets of 10 problems each (0-9, 10-19, 20-29, 30-39).
DIFF = normalise([float(i) for i in range(40)])
LEVELS = [0.0] * 5 + [1.0] * 5 + [2.0] * 5  # a pre-generated pool across three levels


def _cur(scheduler, total_steps=8, stage_kind="rl", difficulties=None, **settings):
    cfg = CurriculumConfig(scheduler=scheduler, **settings)
    if difficulties is None:
        difficulties = LEVELS if scheduler == "levels" else DIFF
    return make_curriculum(cfg, difficulties, total_steps, stage_kind=stage_kind,
                           has_levels=scheduler == "levels")


def _bucket_freq(cur, state, draws, batch_size=1, seed=0):
    gen = np.random.default_rng(seed)
    counts = np.zeros(max(cur.bucket_of) + 1)
    for _ in range(draws):
        for i in cur.sample(state, batch_size, gen):
            counts[cur.bucket_of[i]] += 1
    return counts / counts.sum()


# --------------------------------------------------------------------------- update sequences


def test_adarft_state_sequence_and_nearest_batch():
    cur = _cur("adarft", step_size=0.2, target_reward=0.5)
    s0 = cur.init_state()
    assert s0 == {"scheduler": "adarft", "problems": 40, "step": 0, "target": 0.0, "reward": None}
    s1 = cur.update(s0, BatchStats([0, 1], [1.0, 1.0], None, step=0))
    s2 = cur.update(s1, BatchStats([2, 3], [1.0, 0.5], None, step=1))
    s3 = cur.update(s2, BatchStats([4, 5], [0.0, 0.0], None, step=2))
    assert [s["target"] for s in (s1, s2, s3)] == pytest.approx([0.1, 0.15, 0.05])
    assert (s3["step"], s3["reward"]) == (3, 0.0)
    assert cur.log(s2) == pytest.approx({"curriculum/target_difficulty": 0.15, "curriculum/batch_reward": 0.75})
    # 0.15 * 39 = 5.85: problem 6 (d = 0.1538) is nearest, then 5 (0.1282), then 7 (0.1795)
    assert cur.sample(s2, 3, np.random.default_rng(0)) == [6, 5, 7]


def test_adarft_target_stays_within_the_difficulty_range():
    cur = _cur("adarft", step_size=1.0, target_reward=0.5, difficulties=[0.2, 0.4, 0.6])
    s = cur.init_state()
    assert s["target"] == 0.2
    for step in range(3):
        s = cur.update(s, BatchStats([0], [1.0], None, step))
    assert s["target"] == 0.6


def test_sec_state_sequence():
    cur = _cur("sec", alpha=0.5, temperature=0.2)
    s0 = cur.init_state()
    assert s0["values"] == [0.0, 0.0, 0.0, 0.0]
    # arms: 0 <- problems 0, 5 (|A| 0.2, 0.4; mean 0.3), 1 <- 12 (0.6), 3 <- 35 (0.0); arm 2 not drawn
    s1 = cur.update(s0, BatchStats([0, 5, 12, 35], [1.0, 0.0, 0.5, 0.0], [0.2, -0.4, 0.6, 0.0], step=0))
    assert s1["values"] == pytest.approx([0.15, 0.3, 0.0, 0.0])
    s2 = cur.update(s1, BatchStats([15], [0.5], [0.2], step=1))
    assert s2["values"] == pytest.approx([0.15, 0.25, 0.0, 0.0])
    log = cur.log(s2)
    assert log["curriculum/arm1"] == pytest.approx(0.25)
    z = [math.exp(v / 0.2) for v in (0.15, 0.25, 0.0, 0.0)]
    assert [log[f"curriculum/p_arm{a}"] for a in range(4)] == pytest.approx([x / sum(z) for x in z])


def test_levels_state_sequence():
    cur = _cur("levels", promote_at=0.5)
    s = cur.init_state()
    assert (s["level"], s["window"]) == (0, [])
    # only level-0 answers count while at level 0: [1, 0] -> 0.5 >= 0.5, promote
    s = cur.update(s, BatchStats([0, 1, 6], [1.0, 0.0, 1.0], None, step=0))
    assert (s["level"], s["window"]) == (1, [])
    s = cur.update(s, BatchStats([5, 6], [0.0, 0.0], None, step=1))
    assert (s["level"], s["window"]) == (1, [0.0, 0.0])
    assert cur.log(s) == {"curriculum/level": 1.0, "curriculum/level_accuracy": 0.0}
    s = cur.update(s, BatchStats([7, 8], [1.0, 0.0], None, step=2))
    assert s["level"] == 2
    s = cur.update(s, BatchStats([10, 11], [1.0, 1.0], None, step=3))
    assert (s["level"], s["step"]) == (2, 4)  # the top level is final


def test_levels_with_a_window_waits_until_it_is_full():
    cur = make_curriculum(CurriculumConfig(scheduler="levels", promote_at=0.75), LEVELS, 10,
                          stage_kind="rl", has_levels=True, window=4)
    s = cur.update(cur.init_state(), BatchStats([0, 1, 2], [1.0, 1.0, 1.0], None, step=0))
    assert s["level"] == 0
    s = cur.update(s, BatchStats([3], [1.0], None, step=1))
    assert s["level"] == 1


@pytest.mark.parametrize("name", ["none", "static", "anneal"])
def test_step_driven_schedulers_advance_by_step_without_rewards(name):
    cur = _cur(name, total_steps=8, stage_kind="sft")
    s = cur.init_state()
    s = cur.update(s, BatchStats([0, 1], [], None, step=0))
    s = cur.update(s, BatchStats([2, 3], [], None, step=5))  # the loop's own step count wins
    assert s["step"] == 6
    assert cur.log(s)["curriculum/progress"] == 0.75


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_update_returns_a_new_state_and_leaves_the_old_one(name):
    cur = _cur(name)
    s0 = cur.init_state()
    idx = cur.sample(s0, 4, np.random.default_rng(1))
    before = copy.deepcopy(s0)
    s1 = cur.update(s0, BatchStats(idx, [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], step=0))
    assert s0 == before and s1 is not s0 and s1["step"] == 1


# --------------------------------------------------------------------------- sampled distributions


def test_static_samples_only_open_buckets_in_proportion():
    cur = _cur("static", total_steps=8, pacing="linear")
    assert set(cur.sample(cur.init_state(), 10, np.random.default_rng(0))) == set(range(10))
    # step 3 of 8: x = 1 + 4 * 0.375 = 2.5 -> bucket weights [1, 1, 0.5, 0], 10 problems each
    state = {**cur.init_state(), "step": 3}
    freq = _bucket_freq(cur, state, 4000)
    assert freq == pytest.approx([0.4, 0.4, 0.2, 0.0], abs=0.03)
    assert freq[3] == 0.0
    assert cur.log(state)["curriculum/open_buckets"] == 2.5


def test_anneal_samples_in_proportion_to_annealed_weights():
    cur = _cur("anneal", total_steps=10)
    state = {**cur.init_state(), "step": 5}
    w = np.array([0.5 * (1 - d) + 0.5 for d in DIFF])  # progress 0.5
    expected = [w[b * 10:(b + 1) * 10].sum() / w.sum() for b in range(4)]
    assert _bucket_freq(cur, state, 4000) == pytest.approx(expected, abs=0.03)


def test_none_is_uniform():
    cur = _cur("none")
    assert _bucket_freq(cur, cur.init_state(), 1000, batch_size=4) == pytest.approx([0.25] * 4, abs=0.03)


def test_sec_arm_frequencies_follow_the_softmax_of_values():
    cur = _cur("sec", temperature=0.2)
    state = {**cur.init_state(), "values": [0.3, 0.1, 0.0, 0.2]}
    z = np.exp(np.array([0.3, 0.1, 0.0, 0.2]) / 0.2)
    # batches of 4 never empty a 10-problem arm, so every slot draws its arm from the softmax
    assert _bucket_freq(cur, state, 1000, batch_size=4) == pytest.approx(z / z.sum(), abs=0.03)


def test_sec_skips_empty_arms():
    cur = _cur("sec", buckets=4, difficulties=[0.0, 0.1, 0.9, 1.0])  # arms 1 and 2 have no problems
    state = {**cur.init_state(), "values": [0.0, 5.0, 5.0, 0.0]}
    assert sorted(cur.sample(state, 4, np.random.default_rng(0))) == [0, 1, 2, 3]
    assert cur.log(state)["curriculum/p_arm1"] == 0.0


def test_levels_samples_the_current_level_uniformly():
    cur = _cur("levels")
    state = {**cur.init_state(), "level": 1}
    gen = np.random.default_rng(0)
    counts = np.bincount([i for _ in range(1000) for i in cur.sample(state, 2, gen)], minlength=15)
    assert counts[:5].sum() == 0 and counts[10:].sum() == 0
    assert counts[5:10] / 2000 == pytest.approx([0.2] * 5, abs=0.03)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_no_repeats_within_a_batch_while_problems_last(name):
    cur = _cur(name, total_steps=1)
    state = cur.init_state() if name != "static" else {**cur.init_state(), "step": 1}
    n = 5 if name == "levels" else 40
    if name == "anneal":  # at the start the hardest problem has weight 0: 39 eligible
        n = 39
    batch = cur.sample(state, n, np.random.default_rng(3))
    assert len(set(batch)) == n
    bigger = cur.sample(state, n + 3, np.random.default_rng(3))
    assert len(bigger) == n + 3 and len(set(bigger)) == n


def test_static_fills_a_batch_larger_than_the_open_buckets():
    cur = _cur("static")
    batch = cur.sample(cur.init_state(), 12, np.random.default_rng(0))
    assert set(batch) == set(range(10)) and len(batch) == 12


# --------------------------------------------------------------------------- resume


def _run(cur, state, steps, start=0):
    """Drive a curriculum with rewards and advantages that depend only on the problems drawn."""
    drawn = []
    for step in range(start, start + steps):
        idx = cur.sample(state, 6, np.random.default_rng([7, step]))  # the loop re-seeds per step
        rewards = [1.0 if DIFF[i] < 0.6 else 0.0 for i in idx] if cur.spec.name != "levels" else [1.0] * 6
        adv = [abs(0.5 - DIFF[i]) for i in idx]
        state = cur.update(state, BatchStats(idx, rewards, adv, step))
        drawn.append(idx)
    return state, drawn


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_json_round_trip_resumes_exactly(name):
    straight_state, straight = _run(_cur(name), _cur(name).init_state(), 8)
    half, first = _run(_cur(name), _cur(name).init_state(), 4)
    saved = json.dumps(half)
    resumed_state, second = _run(_cur(name), json.loads(saved), 4, start=4)
    assert first + second == straight
    assert resumed_state == straight_state
    assert json.loads(json.dumps(resumed_state)) == resumed_state


def test_random_random_is_accepted_and_seeded():
    cur = _cur("none")
    a = cur.sample(cur.init_state(), 8, random.Random(5))
    assert a == cur.sample(cur.init_state(), 8, random.Random(5))
    assert a != cur.sample(cur.init_state(), 8, random.Random(6))
    with pytest.raises(TypeError, match="rng must be numpy.random.Generator or random.Random"):
        cur.sample(cur.init_state(), 8, 5)


def test_signal_scores_by_hand():
    from reasonloop.curriculum.rules import decayed_counts, signal_scores

    # Beta(1,1): 6·1·1/(2·3) = 1; Beta(3,3): 6·9/(6·7) = 9/7; Beta(5,1): 6·5/(6·7) = 5/7; Beta(1,5) likewise
    assert signal_scores([0, 2, 4, 0], [0, 2, 0, 4]) == pytest.approx([1.0, 9 / 7, 5 / 7, 5 / 7])
    assert decayed_counts([2.0, 4.0, 0.0], 0.5, {2: 3.0, 0: 1.0}) == [2.0, 2.0, 3.0]


def test_signal_state_sequence_and_draws():
    cur = _cur("signal", decay=0.5, temperature=0.2, difficulties=[0.0, 0.5, 1.0])
    s0 = cur.init_state()
    assert s0 == {"scheduler": "signal", "problems": 3, "step": 0, "successes": [0.0] * 3, "failures": [0.0] * 3}
    # problem 0 split its group (2 of 4), problem 1 was solved by all 4; problem 2 unseen
    s1 = cur.update(s0, BatchStats([0, 1], [0.5, 1.0], None, step=0, samples=[4, 4]))
    assert (s1["successes"], s1["failures"], s1["step"]) == ([2.0, 4.0, 0.0], [2.0, 0.0, 0.0], 1)
    s2 = cur.update(s1, BatchStats([2], [0.25], None, step=1, samples=[4]))
    assert (s2["successes"], s2["failures"]) == ([1.0, 2.0, 1.0], [1.0, 0.0, 3.0])
    assert cur.log(s1) == pytest.approx({"curriculum/seen_share": 2 / 3, "curriculum/split_share": 1 / 3})
    # draws follow softmax(score / 0.2): scores 9/7, 5/7, 1 -> weights e^(9/7/0.2), e^(5/7/0.2), e^(1/0.2)
    w = np.exp(np.array([9 / 7, 5 / 7, 1.0]) / 0.2)
    gen = np.random.default_rng(0)
    counts = np.bincount([cur.sample(s1, 1, gen)[0] for _ in range(4000)], minlength=3) / 4000
    assert counts == pytest.approx(w / w.sum(), abs=0.02)
    assert sorted(cur.sample(s1, 3, gen)) == [0, 1, 2]  # distinct while problems remain


def test_signal_state_resumes_through_json():
    cur = _cur("signal")
    s = cur.update(cur.init_state(), BatchStats([3, 7], [0.5, 0.0], None, step=0, samples=[8, 8]))
    again = json.loads(json.dumps(s))
    assert cur.sample(s, 5, np.random.default_rng(1)) == cur.sample(again, 5, np.random.default_rng(1))
