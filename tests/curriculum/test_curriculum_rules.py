"""Each scheduler's rule against a hand-computed sequence."""

from __future__ import annotations

import pytest

from reasonloop.curriculum.rules import adarft_target, anneal_weights, levels_step, sec_values, static_bucket_weights


@pytest.mark.parametrize("pacing, progress, expected", [
    # K = 4; linear x = 1 + 4p
    ("linear", 0.0, [1, 0, 0, 0]),
    ("linear", 0.25, [1, 1, 0, 0]),
    ("linear", 0.375, [1, 1, 0.5, 0]),
    ("linear", 0.75, [1, 1, 1, 1]),
    # root x = 1 + 4 sqrt(p): p = 1/16 -> 2, p = 0.25 -> 3, p = 0.36 -> 3.4
    ("root", 1 / 16, [1, 1, 0, 0]),
    ("root", 0.25, [1, 1, 1, 0]),
    ("root", 0.36, [1, 1, 1, 0.4]),
    # step x = 1 + floor(4p): opens whole buckets only
    ("step", 0.2, [1, 0, 0, 0]),
    ("step", 0.375, [1, 1, 0, 0]),
    ("step", 0.5, [1, 1, 1, 0]),
    ("step", 1.0, [1, 1, 1, 1]),
])
def test_static_bucket_weights(pacing, progress, expected):
    assert static_bucket_weights(4, progress, pacing) == pytest.approx(expected)


def test_static_unknown_pacing():
    with pytest.raises(ValueError, match="unknown pacing 'cubic'"):
        static_bucket_weights(4, 0.5, "cubic")


def test_anneal_weights_rise_to_uniform():
    d = (0.0, 0.5, 1.0)
    assert anneal_weights(d, 0.0) == [1.0, 0.5, 0.0]
    assert anneal_weights(d, 0.5) == [1.0, 0.75, 0.5]
    assert anneal_weights(d, 1.0) == [1.0, 1.0, 1.0]


def test_adarft_target_sequence():
    # eta = 0.1, beta = 0.5, bounds [0, 0.2]; T0 = 0
    t, seen = 0.0, []
    for reward in [1.0, 0.75, 0.25, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        t = adarft_target(t, reward, 0.5, 0.1, 0.0, 0.2)
        seen.append(t)
    # 0.05, +0.025, -0.025, -0.05 -> clipped at 0, then +0.05 four times hits the 0.2 ceiling
    assert seen == pytest.approx([0.05, 0.075, 0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.2])


def test_sec_values_td0_sequence():
    v = [0.0, 0.0, 0.0]
    v = sec_values(v, {0: 0.4, 2: 0.2}, alpha=0.5)
    assert v == pytest.approx([0.2, 0.0, 0.1])
    v = sec_values(v, {0: 0.0, 1: 0.8}, alpha=0.5)
    assert v == pytest.approx([0.1, 0.4, 0.1])  # arm 2 not drawn: unchanged
    v = sec_values(v, {2: 0.5}, alpha=1.0)
    assert v == pytest.approx([0.1, 0.4, 0.5])


def test_levels_step_window_of_four():
    # promote_at 0.75, top level 2, window 4
    level, win = levels_step(0, [], [1.0, 1.0, 1.0], 4, 0.75, 2)
    assert (level, win) == (0, [1.0, 1.0, 1.0])  # not full yet, though accuracy is 1
    level, win = levels_step(level, win, [0.0, 0.0], 4, 0.75, 2)
    assert (level, win) == (0, [1.0, 1.0, 0.0, 0.0])  # oldest dropped; mean 0.5
    level, win = levels_step(level, win, [1.0, 1.0], 4, 0.75, 2)
    assert (level, win) == (0, [0.0, 0.0, 1.0, 1.0])
    level, win = levels_step(level, win, [1.0], 4, 0.75, 2)
    assert (level, win) == (1, [])  # [0, 1, 1, 1]: mean 0.75 >= 0.75
    level, win = levels_step(2, [], [1.0] * 4, 4, 0.75, 2)
    assert (level, win) == (2, [1.0] * 4)  # already at the top level


def test_levels_step_last_batch_window():
    assert levels_step(0, [1.0] * 9, [1.0, 0.0], None, 0.7, 3) == (0, [1.0, 0.0])
    assert levels_step(0, [], [1.0, 1.0, 0.0], None, 0.6, 3) == (1, [])
    assert levels_step(1, [1.0], [], None, 0.6, 3) == (1, [])  # nothing at this level in the batch
