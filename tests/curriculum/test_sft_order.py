"""SFT example orders by difficulty: hand-checked orders, the annealed draw's law, determinism, bad input."""

from __future__ import annotations

from collections import Counter

import pytest

from reasonloop.curriculum.sft_order import SFT_ORDERS, anneal_order, epoch_order, static_order


def test_static_is_easy_to_hard_with_ties_in_a_seeded_order():
    d = [0.5, 0.0, 1.0, 0.5, 0.25]
    order = static_order(d, seed=0, epoch=0)
    assert [d[i] for i in order] == [0.0, 0.25, 0.5, 0.5, 1.0]
    assert order[:2] == [1, 4] and order[-1] == 2 and set(order[2:4]) == {0, 3}
    # the two 0.5s come in both orders over (seed, epoch): ties are shuffled, not file order
    tie_orders = {tuple(static_order(d, s, e)[2:4]) for s in range(4) for e in range(4)}
    assert tie_orders == {(0, 3), (3, 0)}


def test_anneal_is_a_permutation_deterministic_per_seed_and_epoch():
    d = [i / 9 for i in range(10)]
    a = anneal_order(d, seed=3, epoch=1)
    assert sorted(a) == list(range(10))
    assert a == anneal_order(d, seed=3, epoch=1)
    assert any(anneal_order(d, seed=3, epoch=e) != a for e in range(2, 6))


def test_anneal_first_draw_follows_the_p0_weights_and_never_takes_the_hardest():
    # slot 0 (p = 0): weights 1 - d = [1, 0.5, 0] -> P = 2/3, 1/3, 0; slot 2 (p = 1) takes what is left
    d = [0.0, 0.5, 1.0]
    first = Counter(anneal_order(d, seed=s, epoch=0)[0] for s in range(3000))
    assert first[2] == 0
    assert first[0] / 3000 == pytest.approx(2 / 3, abs=0.03)
    # slot 1 (p = 0.5): after 0 is taken, weights [0.75, 0.5] -> 0.6 for problem 1
    after_easy = [o for o in (anneal_order(d, seed=s, epoch=0) for s in range(3000)) if o[0] == 0]
    assert sum(o[1] == 1 for o in after_easy) / len(after_easy) == pytest.approx(0.6, abs=0.04)


def test_anneal_puts_easy_examples_earlier_on_average_than_a_uniform_shuffle():
    d = [i / 99 for i in range(100)]
    mean_pos_easy = sum(anneal_order(d, s, 0).index(0) for s in range(50)) / 50
    mean_pos_hard = sum(anneal_order(d, s, 0).index(99) for s in range(50)) / 50
    assert mean_pos_easy < 40 < 60 < mean_pos_hard


def test_single_example_and_all_equal():
    assert anneal_order([1.0], 0, 0) == [0] and static_order([1.0], 0, 0) == [0]
    assert sorted(anneal_order([0.5] * 5, 0, 0)) == list(range(5))


@pytest.mark.parametrize("order", sorted(SFT_ORDERS))
def test_difficulties_must_be_normalised(order):
    with pytest.raises(ValueError, match=r"difficulties must be normalised into \[0, 1\], got 1.5"):
        SFT_ORDERS[order]([0.0, 1.5], 0, 0)
    with pytest.raises(ValueError, match="got nan"):
        SFT_ORDERS[order]([float("nan")], 0, 0)


def test_epoch_order_binds_the_order_and_none_is_the_plain_shuffle():
    assert epoch_order("none", [0.1, 0.2], seed=0) is None
    fn = epoch_order("static", [1.0, 0.0, 0.5], seed=7)
    assert fn(0) == [1, 2, 0] == fn(3)
    assert epoch_order("anneal", [0.0, 1.0], seed=2)(0) == anneal_order([0.0, 1.0], 2, 0)
    with pytest.raises(ValueError, match="unknown SFT order 'adarft'; expected none, static, anneal"):
        epoch_order("adarft", [0.0], 0)
