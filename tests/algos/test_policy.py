import math

import pytest
import torch

from reasonloop.algos.policy import clipped_policy_loss, clipped_value_loss


def test_policy_loss_hand_values_with_asymmetric_clip():
    # ratios 1.5 (A>0: clipped at 1+0.28), 0.5 (A<0: clipped at 1-0.2), 1.1 (A>0: inside), 0.7 (A>0: not clipped,
    # the unclipped term is the larger loss), last token masked
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 3.0]])
    adv = torch.tensor([[2.0, -1.0, 1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    old = torch.zeros(1, 5)
    logp = ratio.log().requires_grad_()
    loss, m = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    per_token = [-2.0 * 1.28, 1.0 * 0.8, -1.1, -0.7]
    assert loss.item() == pytest.approx(sum(per_token) / 4, rel=1e-6)
    assert m["clip_frac"].item() == pytest.approx(2 / 4)
    assert m["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 0.7) / 4, rel=1e-6)
    want_kl = sum(r - 1 - math.log(r) for r in [1.5, 0.5, 1.1, 0.7]) / 4
    assert m["approx_kl"].item() == pytest.approx(want_kl, rel=1e-5)
    loss.backward()
    # clipped tokens get no gradient; d(-A r)/d logp = -A r for the others
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -1.1, -0.7, 0.0]]) / 4)


def test_on_policy_loss_is_minus_mean_advantage_and_sequence_advantages_broadcast():
    logp = torch.randn(2, 3)
    adv = torch.tensor([1.0, -3.0])  # one per sequence (GRPO)
    mask = torch.ones(2, 3)
    loss, m = clipped_policy_loss(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(1.0)  # -(3*1 + 3*-3)/6
    assert m["clip_frac"].item() == 0.0 and m["approx_kl"].item() == 0.0
    seq, _ = clipped_policy_loss(logp, logp.clone(), adv, mask, mode="seq_sum_norm", norm_const=6)
    assert seq.item() == pytest.approx(6 / (2 * 6))


def test_value_loss_hand_values():
    values = torch.tensor([[1.0, 0.0, 0.5]])
    old = torch.tensor([[0.5, 0.5, 0.5]])
    returns = torch.tensor([[2.0, -1.0, 0.0]])
    loss, m = clipped_value_loss(values, old, returns, torch.ones(1, 3), clip=0.2)
    # token 0: clipped 0.7 -> err 1.69 vs 1.0: clipped wins; token 1: clipped 0.3 -> 1.69 vs 1.0;
    # token 2: unchanged 0.25
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.69 + 0.25) / 3, rel=1e-6)
    assert m["vf_clip_frac"].item() == pytest.approx(2 / 3)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"clipped_policy_loss: logp, old_logp, mask must share a shape"):
        clipped_policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"clipped_value_loss: values, old_values, returns, mask must share"):
        clipped_value_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3))
