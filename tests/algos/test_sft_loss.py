import math

import pytest
import torch

from reasonloop.algos.sft_loss import SFT_LOSSES, sft_loss

P = torch.tensor([[0.5, 0.25, 0.9], [0.05, 0.8, 0.3]])
LOGP = P.log()
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)  # 5 response tokens; [1, 2] is padding
KEPT = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def mean_over(values):
    return sum(values) / len(values)


def test_registry_names_match_the_config():
    assert set(SFT_LOSSES) == {"nll", "dft", "asft", "profit", "prob"}


def test_nll_dft_prob_hand_values():
    p = [P[i, j].item() for i, j in KEPT]
    nll, m = sft_loss("nll", LOGP, MASK)
    assert nll.item() == pytest.approx(mean_over([-math.log(x) for x in p]), rel=1e-6)
    assert m["p_mean"].item() == pytest.approx(mean_over(p), rel=1e-6)
    assert m["nll"].item() == pytest.approx(nll.item(), rel=1e-6)
    assert m["kept_frac"].item() == 1.0
    dft, _ = sft_loss("dft", LOGP, MASK)
    assert dft.item() == pytest.approx(mean_over([-x * math.log(x) for x in p]), rel=1e-6)
    prob, _ = sft_loss("prob", LOGP, MASK, k=2.0)
    assert prob.item() == pytest.approx(mean_over([-x ** 2 for x in p]), rel=1e-6)


def test_asft_adds_beta_times_kl():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    loss, m = sft_loss("asft", LOGP, MASK, kl=kl, beta=0.5)
    want = mean_over([-P[i, j].item() * math.log(P[i, j].item()) + 0.5 * kl[i, j].item() for i, j in KEPT])
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert m["kl"].item() == pytest.approx(0.3, rel=1e-6)


def test_profit_trains_only_on_confident_tokens():
    loss, m = sft_loss("profit", LOGP, MASK, tau=0.3)
    kept = [0.5, 0.9, 0.8]  # p >= 0.3 among response tokens; 0.25 and 0.05 dropped, padding never counted
    assert loss.item() == pytest.approx(mean_over([-math.log(x) for x in kept]), rel=1e-6)
    assert m["kept_frac"].item() == pytest.approx(3 / 5)
    nothing, m = sft_loss("profit", LOGP, MASK, tau=0.99)
    assert nothing.item() == 0.0 and m["kept_frac"].item() == 0.0


def test_seq_mean_mode_is_passed_through():
    loss, _ = sft_loss("nll", LOGP, MASK, mode="seq_mean")
    rows = [[-math.log(P[0, j].item()) for j in range(3)], [-math.log(P[1, j].item()) for j in range(2)]]
    assert loss.item() == pytest.approx(mean_over([mean_over(r) for r in rows]), rel=1e-6)


def test_dft_gradient_is_p_times_nll_gradient_per_token():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11)
    targets = torch.randint(0, 11, (2, 4))
    mask = torch.ones(2, 4, dtype=torch.bool)

    def grad_of(name):
        z = logits.clone().requires_grad_()
        logp = z.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # [B, T]
        sft_loss(name, logp, mask)[0].backward()
        return z.grad, logp.detach().exp()

    g_nll, p = grad_of("nll")
    g_dft, _ = grad_of("dft")
    torch.testing.assert_close(g_dft, p[..., None] * g_nll)
    # -p has the same gradient, grad(-p) = -p grad(log p): prob with k=1 trains exactly as dft does
    # (the sft-objectives run measured it: the two arms' models answered every held-out problem alike)
    g_prob, _ = grad_of("prob")
    torch.testing.assert_close(g_prob, g_dft)


def test_metrics_are_detached_zero_dim_tensors():
    logp = LOGP.clone().requires_grad_()
    loss, metrics = sft_loss("dft", logp, MASK)
    assert loss.requires_grad and loss.dim() == 0
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


def test_bad_input_messages():
    with pytest.raises(ValueError, match="'asft' needs kl: the per-token KL"):
        sft_loss("asft", LOGP, MASK)
    with pytest.raises(ValueError, match=r"'asft': kl must have logp's shape \(2, 3\); got \(2, 2\)"):
        sft_loss("asft", LOGP, MASK, kl=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown objective 'ce'; expected one of nll, dft, asft, profit, prob"):
        sft_loss("ce", LOGP, MASK)


def test_a_new_objective_is_one_registered_function(monkeypatch):
    # An SFT objective is a function in SFT_LOSSES (plus its test): recipes accept it by name.
    import importlib

    module = importlib.import_module("reasonloop.algos.sft_loss")
    from reasonloop.config import load_recipe
    from reasonloop.errors import UserError

    def double_nll(logp, mask, **_):
        return -2 * logp, mask

    monkeypatch.setitem(module.SFT_LOSSES, "double_nll", double_nll)
    logp, mask = torch.tensor([[-1.0, -3.0]]), torch.tensor([[1, 1]])
    assert module.sft_loss("double_nll", logp, mask)[0].item() == pytest.approx(4.0)  # mean of 2 and 6
    assert load_recipe(None, ["stages.1.objective=double_nll"]).stages[1].objective == "double_nll"
    monkeypatch.delitem(module.SFT_LOSSES, "double_nll")
    with pytest.raises(UserError, match="stages\\[1\\].objective.*expected one of nll, dft"):
        load_recipe(None, ["stages.1.objective=double_nll"])
