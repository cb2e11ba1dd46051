"""The learning-rate schedule against hand-computed values."""

import math

import pytest

from reasonloop.optim import lr_factor


def test_warmup_is_linear_then_cosine_reaches_min_at_the_last_step():
    f = [lr_factor(s, total=6, warmup=2, schedule="cosine", min_ratio=0.1) for s in range(6)]
    # warmup: (s+1)/2; then progress (s-2)/3 over steps 2..5: cos from 1 to 0.1
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 1 / 3, 2 / 3, 1)]
    assert f == pytest.approx(expected)
    assert f[-1] == pytest.approx(0.1)


def test_linear_and_constant():
    assert [lr_factor(s, 5, 0, "linear", 0.2) for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert [lr_factor(s, 5, 1, "constant", 0.2) for s in range(5)] == [1.0] * 5
    assert lr_factor(0, 1, 0, "cosine", 0.1) == 1.0  # a single step: no decay to divide by
    assert lr_factor(9, 5, 0, "linear", 0.2) == pytest.approx(0.2)  # past the end: stays at the minimum


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_factor(1, 5, 0, "step", 0.1)
