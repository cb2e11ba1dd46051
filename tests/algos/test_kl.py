import math

import pytest
import torch

from reasonloop.algos.kl import full_kl, kl_penalty


def test_estimators_match_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = 0.25 / 0.5  # ref / pi
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(r) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(r - math.log(r) - 1)


def test_estimators_are_zero_when_policies_agree_and_k2_k3_nonnegative():
    torch.manual_seed(0)
    logp = torch.randn(4, 6)
    for est in ("k1", "k2", "k3"):
        assert kl_penalty(logp, logp, est).abs().max().item() == 0.0
    ref = torch.randn(4, 6)
    assert (kl_penalty(logp, ref, "k2") >= 0).all() and (kl_penalty(logp, ref, "k3") >= 0).all()


def test_k1_and_k3_are_unbiased_estimates_of_the_exact_kl():
    # sample tokens from pi over a 5-token vocabulary; the mean estimate approaches the exact KL
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(5), torch.randn(5)
    logp_all, ref_all = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    tokens = torch.multinomial(logp_all.exp(), 200_000, replacement=True)
    exact = full_kl(logits, ref_logits).item()
    for est in ("k1", "k3"):
        mean = kl_penalty(logp_all[tokens], ref_all[tokens], est).mean().item()
        assert mean == pytest.approx(exact, abs=0.01)


def test_full_kl_matches_loop_and_temperature():
    p, q = [0.7, 0.2, 0.1], [0.5, 0.25, 0.25]
    exact = sum(a * math.log(a / b) for a, b in zip(p, q))
    logits, ref = torch.tensor(p).log(), torch.tensor(q).log()
    assert full_kl(logits, ref).item() == pytest.approx(exact, rel=1e-5)
    assert full_kl(2 * logits, 2 * ref, temperature=2.0).item() == pytest.approx(exact, rel=1e-5)


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="unknown estimator 'k4'; expected one of k1, k2, k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")
