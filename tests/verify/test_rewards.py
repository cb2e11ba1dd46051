import math

import pytest
import torch

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.config import TaskConfig
from reasonloop.verify import is_correct
from reasonloop.verify.rewards import build_reward, check_rewards, load_reward

P = Problem(id="p0", question="2+3?", answer="5")


def _task(**kw) -> TaskConfig:
    return TaskConfig(**kw)


def test_is_correct():
    assert is_correct("2+3 = 5\nAnswer: 5", P)
    assert is_correct("Answer: 5", "5") and not is_correct("Answer: 6", "5")  # gold as text
    assert not is_correct("Answer: 6", P)
    assert not is_correct("no idea", P)
    # Strategy order matters: the answer line says 6, the last number is 5.
    assert not is_correct("Answer: 6\nor 5", P, _task(extract=["answer_line", "last_number"]))
    assert is_correct("Answer: 6\nor 5", P, _task(extract=["last_number"]))


def test_integer_gold_matches_exactly_whatever_the_tolerance():
    gold = Problem(id="g", question="?", answer="1000")
    loose = _task(numeric_tolerance=0.01, tolerance_mode="relative")  # gsm8k-reft's old setting
    assert not is_correct("#### 990", gold, loose) and not is_correct("Answer: 1001", gold, loose)
    assert not is_correct("Answer: 9999", "10000")  # the old default 1e-4 relative accepted this
    for same in ("Answer: 1,000", "Answer: 1000.0", "Answer: $1000", "Answer: 1000 dollars"):
        assert is_correct(same, gold, loose), same


def test_tolerance_is_absolute_unless_relative():
    gold = Problem(id="g", question="?", answer="2.5")
    assert is_correct("Answer: 2.509", gold, _task(numeric_tolerance=0.01))
    assert not is_correct("Answer: 2.52", gold, _task(numeric_tolerance=0.01))
    # relative: 0.01 * 2.5 = 0.025
    assert is_correct("Answer: 2.52", gold, _task(numeric_tolerance=0.01, tolerance_mode="relative"))
    assert not is_correct("Answer: 2.53", gold, _task(numeric_tolerance=0.01, tolerance_mode="relative"))
    assert is_correct("Answer: 2.50004", gold) and not is_correct("Answer: 2.5002", gold)  # default 1e-4


def test_correct_partial_format_values():
    completions = ["Answer: 5", "Answer: 7", "I give up", "it is 5"]
    problems = [P] * 4
    line_only = _task(extract=["answer_line"])
    assert build_reward(["correct"], task=line_only)(completions, problems) == [1.0, 0.0, 0.0, 0.0]
    assert build_reward(["partial"], task=line_only)(completions, problems) == [1.0, 0.1, 0.0, 0.0]
    # last_number finds the right 5 in "it is 5": correct, so 1.0; but it never earns the 0.1 for format.
    assert build_reward(["partial"])(completions, problems) == [1.0, 0.1, 0.0, 1.0]
    assert build_reward(["format"])(completions, problems) == [1.0, 1.0, 0.0, 0.0]
    hashed = build_reward(["format"], task=_task(answer_format="hash"))
    assert hashed(["#### 5", "Answer: 5"], [P, P]) == [1.0, 0.0]


def test_partial_reward_is_zero_without_the_asked_answer_line():
    """ReFT: 0 when the answer line is missing, even when a fallback extractor finds some number."""
    reft = _task(answer_format="hash", extract=["hash", "last_number"])
    reward = build_reward(["partial"], task=reft)
    assert reward(["#### 4", "so it is 4 apples", "#### 5", "no digits"], [P] * 4) == [0.1, 0.0, 1.0, 0.0]


def test_built_in_rewards_reuse_given_verdicts():
    """RL judges once: breakdown scores the verdicts it is given instead of judging again."""
    from reasonloop.verify.judge import Verdict

    reward = build_reward(["correct", "partial"])
    verdicts = [Verdict(answer="x", correct=True, formatted=True), Verdict(answer=None, correct=False,
                                                                          formatted=False)]
    # The texts say otherwise; the verdicts win, so nothing was re-judged.
    total, parts = reward.breakdown(["Answer: 6", "Answer: 5"], [P, P], verdicts)
    assert parts == {"correct": [1.0, 0.0], "partial": [1.0, 0.0]} and total == [2.0, 0.0]


def test_weighted_sum_and_breakdown():
    reward = build_reward(["correct", "format"], weights=[1.0, 0.5], task=_task(extract=["answer_line"]))
    completions = ["Answer: 5", "Answer: 4", "5"]
    total, parts = reward.breakdown(completions, [P] * 3)
    assert total == [1.5, 0.5, 0.0]
    assert parts == {"correct": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}


def test_gym_problems_use_gym_scorer():
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
    gym = Problem(id="g", question=entry["question"], answer=str(entry["answer"]),
                  source="gym:basic_arithmetic", meta={"entry": entry})
    wrong = str(int(entry["answer"]) + 1)
    reward = build_reward(["partial"])
    assert reward([f"Answer: {entry['answer']}", f"Answer: {wrong}", "none"], [gym] * 3) == [1.0, 0.1, 0.0]


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length_penalty(completions, problems):\n"
        "    return [-len(c) / 100 for c in completions]\n"
        "def wrong_length(completions, problems):\n"
        "    return [1.0]\n"
        "NOT_A_FUNCTION = 3\n"
    )
    (tmp_path / "broken_rewards.py").write_text("import package_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_import_path_reward(reward_module):
    reward = build_reward(["correct", f"{reward_module}:length_penalty"], weights=[1.0, 1.0])
    assert reward(["Answer: 5"], [P]) == pytest.approx([1.0 - 0.09])


def test_import_path_errors(reward_module):
    with pytest.raises(UserError, match=r"^stages\[1\].reward: reward 'nope_mod:f': module 'nope_mod' not found"):
        build_reward(["nope_mod:f"], where="stages[1].reward")
    with pytest.raises(UserError, match="module 'my_rewards' has no attribute 'missing'"):
        load_reward("my_rewards:missing")
    with pytest.raises(UserError, match=r"'NOT_A_FUNCTION' is not callable \(it is int\)"):
        load_reward("my_rewards:NOT_A_FUNCTION")
    with pytest.raises(UserError, match="importing 'broken_rewards' failed: No module named 'package_that_is_not_there'"):
        load_reward("broken_rewards:f")
    with pytest.raises(UserError, match="'corect' is not a built-in reward"):
        build_reward(["corect"])
    with pytest.raises(UserError, match="2 reward_weights for 1 reward functions"):
        build_reward(["correct"], weights=[1.0, 2.0])
    with pytest.raises(UserError, match="the list of reward functions is empty"):
        build_reward([])


def test_wrong_length_from_user_reward_names_it(reward_module):
    reward = build_reward(["my_rewards:wrong_length"])
    with pytest.raises(UserError, match="reward 'my_rewards:wrong_length' returned 1 values for 2 completions"):
        reward(["a", "b"], [P, P])


def test_check_rewards():
    assert check_rewards([1, 0.5, True], "r", 3) == [1.0, 0.5, 1.0]
    assert check_rewards(torch.tensor([1.0, 2.0]), "r", 2) == [1.0, 2.0]
    with pytest.raises(UserError, match="reward 'r' returned 2 values for 3 completions"):
        check_rewards([1.0, 2.0], "r", 3)
    with pytest.raises(UserError, match="reward 'r' returned a non-number at index 1: '1'"):
        check_rewards([1.0, "1"], "r", 2)
    with pytest.raises(UserError, match="reward 'r' returned nan at index 0; rewards must be finite"):
        check_rewards([math.nan], "r", 1)
    with pytest.raises(UserError, match="reward 'r' returned inf at index 0"):
        check_rewards([math.inf], "r", 1)
    with pytest.raises(UserError, match="reward 'r' returned a float; it must return a list of 1 floats"):
        check_rewards(1.0, "r", 1)
    with pytest.raises(UserError, match="reward 'r' returned a NoneType"):
        check_rewards(None, "r", 1)


# ---------------------------------------------------------------- TRL's convention
def test_calling_convention_is_read_from_the_signature():
    from reasonloop.verify.rewards import calling_convention

    def trl(completions, **kwargs): ...
    def trl_with_column(completions, solution, **kwargs): ...  # TRL's own accuracy_reward has this shape
    def ours(completions, problems): ...
    def ours_with_kwargs(completions, problems, **kwargs): ...

    assert calling_convention(trl) == calling_convention(trl_with_column) == "trl"
    assert calling_convention(ours) == calling_convention(ours_with_kwargs) == "positional"
    assert calling_convention(len) == "positional"  # a builtin: positional, as before


def test_trl_columns_pass_problem_fields_and_record_columns():
    from reasonloop.verify.rewards import trl_columns

    a = Problem(id="a", question="Q1", answer="5", meta={"record": {"Body": "B1", "Answer": 5.0, "answer": "raw"}})
    b = Problem(id="b", question="Q2", answer="7", difficulty=2.0, meta={"record": {"Body": "B2", "Extra": 1}})
    cols = trl_columns([a, b])
    assert cols["prompts"] == ["Q1", "Q2"] and cols["answer"] == ["5", "7"]  # the problem's answer wins
    assert cols["Body"] == ["B1", "B2"] and cols["Answer"] == [5.0, None] and cols["Extra"] == [None, 1]
    assert cols["id"] == ["a", "b"] and cols["difficulty"] == [None, 2.0] and cols["problems"] == [a, b]


def test_readme_trl_rewards_work_as_written(readme_reward_module):
    module = readme_reward_module
    reward = build_reward(["correct", f"{module}:exact_answer", f"{module}:brevity"])
    total, parts = reward.breakdown(["Answer: 5", "Answer: 6 and more words"], [P, P])
    assert parts[f"{module}:exact_answer"] == [1.0, 0.0]
    assert parts[f"{module}:brevity"] == pytest.approx([-(9 - 4) / 1000, -(24 - 4) / 1000])
    assert total == pytest.approx([2.0 - 0.005, -0.020])


def test_trl_reward_errors_name_the_function(tmp_path, monkeypatch):
    (tmp_path / "trl_bad.py").write_text("def needs_column(completions, solution, **kwargs):\n    return [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = build_reward(["trl_bad:needs_column"])
    with pytest.raises(UserError, match=r"reward function 'trl_bad:needs_column' raised TypeError: .*'solution'"):
        reward(["a"], [P])
