import math

import pytest
import torch

from reasonloop.algos.verifier_loss import verifier_loss

# Two solutions: positions 0, 1 belong to the first (right, last logit 2), position 2 to the second (wrong, -1).
LOGITS = torch.tensor([0.0, 2.0, -1.0])
LABELS = torch.tensor([1.0, 0.0])
SEQ_OF = torch.tensor([0, 0, 1])
IS_LAST = torch.tensor([False, True, True])


def softplus(x):  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def test_outcome_loss_by_hand():
    loss, m = verifier_loss(LOGITS, LABELS, SEQ_OF, IS_LAST, "outcome")
    # -log s(2) = softplus(-2); -log(1 - s(-1)) = softplus(-1)
    assert loss.item() == pytest.approx((softplus(-2) + softplus(-1)) / 2, rel=1e-6)
    assert m["accuracy"].item() == 1.0 and m["denominator"].item() == 2


def test_token_loss_averages_within_each_solution_first():
    loss, _ = verifier_loss(LOGITS, LABELS, SEQ_OF, IS_LAST, "token")
    first = (softplus(0.0) + softplus(-2.0)) / 2  # both positions of solution 0 pulled towards 1
    assert loss.item() == pytest.approx((first + softplus(-1.0)) / 2, rel=1e-6)


def test_loss_refuses_bad_input():
    with pytest.raises(ValueError, match="1 last positions for 2 solutions"):
        verifier_loss(LOGITS, LABELS, SEQ_OF, torch.tensor([False, False, True]))
    with pytest.raises(ValueError, match="objective"):
        verifier_loss(LOGITS, LABELS, SEQ_OF, IS_LAST, "value")
