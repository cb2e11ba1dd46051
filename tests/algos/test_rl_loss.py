"""rl_loss: the one minibatch loss, checked part by part against hand values."""

import pytest
import torch

from reasonloop.algos.rl_loss import rl_loss

MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
LOGP = torch.tensor([[-1.0, -1.0], [-2.0, -5.0]])


def test_on_policy_policy_loss_is_minus_mean_advantage():
    # ratio 1 everywhere: per-token loss = -advantage; token mean over 3 tokens of [1, 1, -2] -> 0
    loss, m = rl_loss(LOGP, LOGP, torch.tensor([1.0, -2.0]), MASK)
    assert loss.item() == pytest.approx(-(1 + 1 - 2) / 3) and m["clip_frac"].item() == 0.0
    assert set(m) == {"policy_loss", "clip_frac"}


def test_kl_is_added_only_as_a_loss_term_when_weighted():
    kl = torch.tensor([[0.3, 0.3], [0.6, 9.0]])  # masked 9.0 never counts
    base, _ = rl_loss(LOGP, LOGP, torch.zeros(2), MASK)
    reported, m = rl_loss(LOGP, LOGP, torch.zeros(2), MASK, kl=kl)
    weighted, _ = rl_loss(LOGP, LOGP, torch.zeros(2), MASK, kl=kl, kl_coef=0.5)
    assert m["kl"].item() == pytest.approx(0.4) and reported.item() == base.item()
    assert weighted.item() == pytest.approx(base.item() + 0.5 * 0.4)


def test_value_loss_is_added_with_its_weight():
    values, returns = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    loss, m = rl_loss(LOGP, LOGP, torch.zeros(2), MASK, values=values, old_values=values, returns=returns,
                      vf_coef=2.0)
    # 0.5 * squared errors [1, 0, 4] -> token mean 5/6, times vf_coef 2
    assert m["value_loss"].item() == pytest.approx(5 / 6) and loss.item() == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="needs old_values and returns"):
        rl_loss(LOGP, LOGP, torch.zeros(2), MASK, values=values)
