"""The advantage-estimator registry: the built-ins through it, and a new estimator added by registering
one function (what a new module in reasonloop/algos/estimators/ does)."""

import pytest
import torch

from reasonloop.algos.estimators import ESTIMATORS, AdvantageInput, estimators, get_estimator, register
from reasonloop.config import RlStage


def test_builtins_are_registered_with_what_the_loop_needs():
    found = estimators()
    assert {"grpo", "rloo", "ppo"} <= set(found)
    assert found["ppo"].value_head and found["ppo"].kl == "reward" and found["ppo"].kl_estimator == "k1"
    assert found["grpo"].groups and found["grpo"].kl == "loss" and not found["grpo"].value_head


def test_grpo_and_rloo_through_the_registry_hand_values():
    inp = AdvantageInput(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), group_size=3,
                         mask=torch.ones(6, 2))
    adv, returns = get_estimator("rloo").fn(inp)
    # group 1 [1, 0, 0]: 1 - 0 = 1, 0 - 0.5, 0 - 0.5; group 2 all equal: 0
    assert returns is None and adv.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    adv, _ = get_estimator("grpo").fn(inp, scale_std=False)
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])


def test_ppo_through_the_registry_is_gae_on_token_rewards():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    inp = AdvantageInput(rewards=torch.tensor([1.0]), group_size=1, mask=mask,
                         token_rewards=torch.tensor([[0.0, 1.0, 0.0]]), values=torch.tensor([[0.5, 0.25, 0.0]]))
    adv, returns = get_estimator("ppo").fn(inp, gamma=1.0, lam=1.0, whiten_advantages=False)
    assert returns[0, :2].tolist() == pytest.approx([1.0, 1.0]) and adv[0, :2].tolist() == pytest.approx([0.5, 0.75])


def test_a_new_estimator_is_one_registered_function():
    @register("test_max_baseline", groups=True)
    def max_baseline(inp: AdvantageInput):
        g = inp.rewards.view(-1, inp.group_size)
        return (g - g.max(dim=1, keepdim=True).values).reshape(-1), None

    try:
        cfg = RlStage(kind="rl", algorithm="test_max_baseline", group_size=2)  # the recipe accepts it
        inp = AdvantageInput(rewards=torch.tensor([1.0, 3.0]), group_size=2, mask=torch.ones(2, 1))
        assert cfg.estimator().fn(inp)[0].tolist() == [-2.0, 0.0]
        with pytest.raises(ValueError, match="needs group_size >= 2"):
            RlStage(kind="rl", algorithm="test_max_baseline", group_size=1)
    finally:
        del ESTIMATORS["test_max_baseline"]
    with pytest.raises(ValueError, match="expected one of grpo, ppo, rloo, got 'test_max_baseline'"):
        RlStage(kind="rl", algorithm="test_max_baseline")
