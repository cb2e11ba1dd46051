import pytest
import torch

from reasonloop.algos.advantages import gae, group_advantages, leave_one_out, whiten, zero_variance_groups


def gae_loop(rewards, values, mask, gamma, lam):
    """Plain-Python GAE over each sequence's response tokens only (masked positions skipped)."""
    adv = [[0.0] * len(r) for r in rewards]
    for b in range(len(rewards)):
        steps = [t for t in range(len(rewards[b])) if mask[b][t]]
        last, next_v = 0.0, 0.0
        for t in reversed(steps):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t], next_v = last, values[b][t]
    return adv


def test_gae_three_steps_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, a2 + 0.7]]))


def test_gae_gamma_one_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.1, 0.2, 0.3, 0.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[0.6, 0.5, 0.3, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-0.4, -1.5, -2.7, 0.0]]))


def test_gae_matches_loop_with_padding_and_holes():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 9), torch.randn(4, 9)
    mask = torch.rand(4, 9) > 0.3
    mask[2] = False  # a sequence with no response tokens
    adv, ret = gae(rewards, values, mask, 0.99, 0.95)
    want = torch.tensor(gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), 0.99, 0.95))
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, torch.where(mask, want + values, 0.0))


def test_grpo_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # sample std of group 1 = 0.57735
    adv = group_advantages(rewards, 4, eps=0.0 + 1e-6)
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    torch.testing.assert_close(adv[4:], torch.zeros(4))  # all-equal group: no signal
    torch.testing.assert_close(group_advantages(rewards, 4, scale_std=False)[:4],
                               torch.tensor([0.5, -0.5, -0.5, 0.5]))  # Dr. GRPO: centred only


def test_rloo_matches_loop():
    rewards = torch.tensor([1.0, 0.0, 0.1, 1.0, 2.0, 3.0])
    want = []
    for g in range(2):
        group = rewards[g * 3:(g + 1) * 3].tolist()
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1:]
            want.append(r - sum(others) / len(others))
    torch.testing.assert_close(leave_one_out(rewards, 3), torch.tensor(want))


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.1, 0.1])
    assert zero_variance_groups(rewards, 2).tolist() == [True, True, True]
    assert zero_variance_groups(rewards, 3).tolist() == [False, False]


def test_whiten_uses_masked_entries_only():
    values = torch.tensor([[1.0, 2.0, 3.0], [100.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, std = kept.mean(), kept.std()  # 2.5, sample std
    out = whiten(values, mask)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 0.0]]).sub(mean).div(std) * mask)
    kept_out = out[mask]
    assert kept_out.mean().abs().item() < 1e-6 and kept_out.std().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(whiten(values, mask, shift_mean=False)[mask], (kept - mean) / std + mean)


def test_bad_group_sizes_are_named():
    with pytest.raises(ValueError, match="group_advantages: need group_size >= 2 dividing the number of "
                                         "rewards; got group_size=4 for 6 rewards"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="leave_one_out: need group_size >= 2"):
        leave_one_out(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"rewards must be \[N\] \(one per sample\); got shape \(2, 2\)"):
        zero_variance_groups(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match=r"gae: rewards, values, mask must all be \[B, T\]"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), 1.0, 0.95)
