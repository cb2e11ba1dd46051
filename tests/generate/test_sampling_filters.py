"""Pure sampling functions on hand-made logits rows."""

from __future__ import annotations

import math

import pytest
import torch

from reasonloop.errors import UserError
from reasonloop.generate import SamplingParams
from reasonloop.generate.sampling import check_params, filter_logits, sample_tokens, step_uniforms

PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
LOGITS = PROBS.log()  # [1, 4]


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero()[:, 0].tolist()


def test_top_k_keeps_the_k_largest():
    assert kept(filter_logits(torch.tensor([[1.0, 4.0, 2.0, 3.0]]), top_k=2)) == [1, 3]


def test_top_p_keeps_smallest_set_reaching_p():
    # Mass before each token: 0, 0.5, 0.8, 0.95 -> a token is dropped once that mass reaches p.
    assert kept(filter_logits(LOGITS, top_p=0.8)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_p=0.81)) == [0, 1, 2]
    assert kept(filter_logits(LOGITS, top_p=0.1)) == [0]  # the top token always survives


def test_min_p_scales_with_top_probability():
    # cutoff = 0.4 * 0.5 = 0.2: 0.3 stays, 0.15 goes.
    assert kept(filter_logits(LOGITS, min_p=0.4)) == [0, 1]


def test_filters_combine_and_keep_untouched_values():
    # After top-k 3 the renormalised probs are .5/.95, .3/.95, .15/.95 = .526, .316, .158, so top-p
    # sees mass-before 0, .526, .842 and min-p compares against .526.
    out = filter_logits(LOGITS, top_k=3, top_p=0.85, min_p=0.2)  # min-p cutoff .105 < .158
    assert kept(out) == [0, 1, 2]
    assert torch.equal(out[0, :3], LOGITS[0, :3])
    assert kept(filter_logits(LOGITS, top_k=3, top_p=0.84)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_k=3, top_p=0.85, min_p=0.35)) == [0, 1]  # cutoff .184


def test_greedy_returns_argmax_and_its_log_softmax():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    tokens, logp = sample_tokens(logits, SamplingParams(temperature=0), None)
    expected = 2.0 - math.log(math.exp(0) + math.exp(2) + math.exp(1))
    assert tokens.tolist() == [1]
    assert logp.item() == pytest.approx(expected, abs=1e-6)


def test_logprob_is_under_temperature_before_truncation():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    tokens, logp = sample_tokens(logits, SamplingParams(temperature=0.5, top_k=1), torch.tensor([0.99]))
    scaled = [0.0, 4.0, 2.0]
    expected = 4.0 - math.log(sum(math.exp(v) for v in scaled))
    assert tokens.tolist() == [1]  # top-k 1 leaves only the argmax
    assert logp.item() == pytest.approx(expected, abs=1e-6)


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.tensor([[0.7, 0.3]]).log().expand(20000, 2)
    uniforms = step_uniforms(range(20000), [0] * 20000)  # 20000 streams' first draws
    tokens, _ = sample_tokens(logits, SamplingParams(temperature=1.0), uniforms)
    assert tokens.float().mean().item() == pytest.approx(0.3, abs=0.015)  # 0.015 ~ 4.6 std errors


@pytest.mark.parametrize("field,value,message", [
    ("top_p", 0.0, "sampling top_p: expected 0 < top_p <= 1, got 0.0"),
    ("temperature", -1.0, "sampling temperature: expected >= 0, got -1.0"),
    ("n", 0, "sampling n: expected >= 1, got 0"),
    ("max_new_tokens", 0, "sampling max_new_tokens: expected >= 1, got 0"),
    ("min_p", 1.0, "sampling min_p: expected 0 <= min_p < 1, got 1.0"),
    ("top_k", -2, "sampling top_k: expected >= 0 (0 = off), got -2"),
    ("stop", ("",), "sampling stop: empty stop string"),
])
def test_bad_params_name_the_field(field, value, message):
    with pytest.raises(UserError) as err:
        check_params(SamplingParams(**{field: value}))
    assert str(err.value) == message
