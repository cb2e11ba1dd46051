import pytest
import torch

from reasonloop.algos.aggregate import aggregate, aggregate_parts, masked_mean

# two sequences: [1, 2, 3] (3 tokens) and [10, -, -] (1 token)
LOSS = torch.tensor([[1.0, 2.0, 3.0], [10.0, 99.0, 99.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)


def test_token_mean_weighs_every_token_the_same():
    assert aggregate(LOSS, MASK, "token_mean").item() == pytest.approx((1 + 2 + 3 + 10) / 4)


def test_seq_mean_weighs_every_sequence_the_same():
    assert aggregate(LOSS, MASK, "seq_mean").item() == pytest.approx((2.0 + 10.0) / 2)


def test_seq_mean_excludes_sequences_without_tokens():
    loss = torch.cat([LOSS, torch.tensor([[5.0, 5.0, 5.0]])])
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=torch.bool)])
    assert aggregate(loss, mask, "seq_mean").item() == pytest.approx(6.0)


def test_seq_sum_norm_divides_by_batch_times_constant():
    assert aggregate(LOSS, MASK, "seq_sum_norm", norm_const=4).item() == pytest.approx(16 / (2 * 4))


def test_matches_loop_version_on_random_input():
    torch.manual_seed(0)
    loss, mask = torch.randn(5, 7), torch.rand(5, 7) > 0.4
    tokens = [loss[b, t].item() for b in range(5) for t in range(7) if mask[b, t]]
    seqs = [[loss[b, t].item() for t in range(7) if mask[b, t]] for b in range(5)]
    seq_means = [sum(s) / len(s) for s in seqs if s]
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(sum(tokens) / len(tokens), rel=1e-5)
    assert aggregate(loss, mask, "seq_mean").item() == pytest.approx(sum(seq_means) / len(seq_means), rel=1e-5)
    assert aggregate(loss, mask, "seq_sum_norm", 7).item() == pytest.approx(sum(tokens) / 35, rel=1e-5)


def test_masked_positions_never_leak_even_if_not_finite():
    loss = torch.tensor([[1.0, float("inf")], [float("nan"), 3.0]], requires_grad=True)
    mask = torch.tensor([[1, 0], [0, 1]])
    out = aggregate(loss, mask, "token_mean")
    out.backward()
    assert out.item() == 2.0
    assert loss.grad.tolist() == [[0.5, 0.0], [0.0, 0.5]]


def test_empty_mask_gives_zero_not_nan():
    loss = torch.ones(2, 3, requires_grad=True)
    for mode in ("token_mean", "seq_mean"):
        assert aggregate(loss, torch.zeros(2, 3), mode).item() == 0.0
    assert masked_mean(torch.ones(3), torch.zeros(3)).item() == 0.0


def test_bad_mode_and_missing_constant_are_named():
    with pytest.raises(ValueError, match="unknown mode 'sum'; expected one of token_mean, seq_mean, seq_sum_norm"):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="'seq_sum_norm' needs a positive norm_const"):
        aggregate(LOSS, MASK, "seq_sum_norm")
    with pytest.raises(ValueError, match=r"must both be \[B, T\]; got \(2, 3\) and \(3,\)"):
        aggregate(LOSS, MASK[0], "token_mean")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_aggregate_parts_summed_over_a_split_give_the_whole(mode):
    # rows: [1, 2, -] [3, -, -] [-, -, -] [4, 5, 6]; hand values of the whole:
    # token_mean 21/6, seq_mean (1.5 + 3 + 5)/3 (the empty row is not a sequence), seq_sum_norm 21/(4*3)
    values = torch.tensor([[1., 2, 0], [3, 0, 0], [9, 9, 9], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    whole = {"token_mean": 21 / 6, "seq_mean": 9.5 / 3, "seq_sum_norm": 21 / 12}[mode]
    assert aggregate(values, mask, mode, norm_const=3).item() == pytest.approx(whole)
    parts = [aggregate_parts(values[rows], mask[rows], mode, norm_const=3) for rows in ([0], [1, 2, 3])]
    assert (sum(n for n, _ in parts) / sum(d for _, d in parts)).item() == pytest.approx(whole)
