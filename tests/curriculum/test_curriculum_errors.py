"""What a recipe author (or a loop with a wrong call) sees when a curriculum cannot work."""

from __future__ import annotations

import numpy as np
import pytest

from reasonloop.config import CurriculumConfig
from reasonloop.curriculum import BatchStats, make_curriculum, normalise
from reasonloop.errors import UserError

DIFF = normalise([float(i) for i in range(8)])


def _make(scheduler, difficulties=DIFF, **kw):
    settings = {k: kw.pop(k) for k in list(kw) if k in CurriculumConfig.model_fields}
    kw.setdefault("stage_kind", "rl")
    return make_curriculum(CurriculumConfig(scheduler=scheduler, **settings), difficulties, 10, **kw)


def test_levels_on_a_task_without_levels_names_the_field():
    with pytest.raises(UserError) as err:
        _make("levels", where="stages[2].curriculum")
    assert str(err.value) == (
        "stages[2].curriculum.scheduler: 'levels' needs a task with difficulty levels (task.source: gym with "
        "task.gym.levels); this task has none, so use none, static, anneal, adarft or sec")
    with pytest.raises(UserError, match=r"^curriculum\.scheduler: 'levels' needs a task with difficulty levels"):
        _make("levels", has_levels=False)


@pytest.mark.parametrize("name", ["adarft", "sec", "levels"])
def test_reward_driven_schedulers_are_refused_in_sft(name):
    with pytest.raises(UserError, match=rf"^stages\[0\]\.curriculum\.scheduler: '{name}' steers by rewards, "
                                        "which an sft stage does not produce"):
        _make(name, stage_kind="sft", has_levels=True, where="stages[0].curriculum")


def test_sec_needs_an_rl_stage():
    with pytest.raises(UserError, match=r"^curriculum\.scheduler: 'sec' scores arms by RL advantages, which a rft"):
        _make("sec", stage_kind="rft")
    assert _make("adarft", stage_kind="rft").spec.name == "adarft"


def test_level_pool_with_a_missing_level():
    with pytest.raises(UserError, match=r"^curriculum\.scheduler: the task's problem pool has no problems at "
                                        r"level\(s\) \[1\]"):
        _make("levels", difficulties=[0.0, 2.0, 2.0], has_levels=True)
    with pytest.raises(ValueError, match="difficulties must be level indices"):
        _make("levels", difficulties=[0.0, 0.5], has_levels=True)


def test_checkpoint_from_another_recipe():
    sec_state = _make("sec").init_state()
    with pytest.raises(UserError, match=r"^stages\[1\]\.curriculum\.scheduler: the checkpoint's curriculum state "
                                        "is for 'sec' but the recipe asks for 'adarft'"):
        _make("adarft", where="stages[1].curriculum").sample(sec_state, 2, np.random.default_rng(0))
    with pytest.raises(UserError, match="covers 8 problems but the task now has 3"):
        _make("sec", difficulties=[0.0, 0.5, 1.0]).update(sec_state, BatchStats([0], [1.0], [1.0], 0))
    with pytest.raises(UserError, match=r"^curriculum\.buckets: the checkpoint's curriculum has 4 arms but the "
                                        "recipe asks for 2"):
        _make("sec", buckets=2).log(sec_state)


def test_wrong_calls_from_a_loop():
    sec = _make("sec")
    state = sec.init_state()
    with pytest.raises(ValueError, match="sec curriculum needs BatchStats.abs_advantages"):
        sec.update(state, BatchStats([0], [1.0], None, 0))
    with pytest.raises(ValueError, match="the adarft curriculum needs one reward per index, got 2 indices and 0"):
        _make("adarft").update(_make("adarft").init_state(), BatchStats([0, 1], [], None, 0))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
        sec.update(state, BatchStats([8], [1.0], [1.0], 0))
    with pytest.raises(ValueError, match="rewards must be finite"):
        sec.update(state, BatchStats([0], [float("nan")], [1.0], 0))
    with pytest.raises(ValueError, match="1 indices but 2 abs_advantages"):
        sec.update(state, BatchStats([0], [1.0], [1.0, 2.0], 0))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sec.sample(state, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="stage_kind must be one of"):
        _make("none", stage_kind="eval")
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        make_curriculum(CurriculumConfig(), DIFF, 0, stage_kind="rl")
    with pytest.raises(ValueError, match="at least one problem"):
        make_curriculum(CurriculumConfig(), [], 5, stage_kind="sft")
