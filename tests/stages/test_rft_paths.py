import random

import pytest

from reasonloop.stages.rft_paths import (
    dart_allocation,
    dedup_key,
    levenshtein,
    mentions_hint,
    select_distinct,
    star_hint_prompt,
    strip_hint,
)
from reasonloop.errors import UserError

A = "First, Tom has 3 * 4 = 12 apples. Then he gets 12 + 5 = 17 apples.\nAnswer: 17"
B = "Multiply: 3 x 4 = 12. Add the five: 12 + 5 = 17.\nAnswer: 17"  # same path as A
C = "He gets 12 + 5 = 17 apples after having 3 * 4 = 12 apples.\nAnswer: 17"  # other order
GOLD = "Tom has 3*4=<<3*4=12>>12 apples.\nHe gets 12+5=<<12+5=17>>17.\n#### 17"


def _dp_levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_levenshtein_hand_values_and_dp():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("ab=1") for _ in range(rng.randint(0, 90)))
        b = "".join(rng.choice("ab=2") for _ in range(rng.randint(0, 90)))
        assert levenshtein(a, b) == _dp_levenshtein(a, b)


def test_dedup_keys():
    assert dedup_key(A) == dedup_key(B) == "eq:3*4=12|12+5=17"
    assert dedup_key(C) == "eq:12+5=17|3*4=12"
    assert dedup_key(GOLD) == dedup_key(A)
    # Without equations the text key stands in, so different texts stay different.
    assert dedup_key("It is  Twelve.") == "text:it is twelve."
    assert dedup_key("It is twelve.") != dedup_key("Twelve it is.")
    assert dedup_key("It is  Twelve.", "text") == "it is twelve."
    assert dedup_key("It is  Twelve.", "exact") == "It is  Twelve."
    with pytest.raises(ValueError, match="unknown dedup mode 'fuzzy'"):
        dedup_key("x", "fuzzy")


def test_select_distinct_equations_with_gold():
    # A and B are the gold's path; C computes the steps in another order.
    assert select_distinct([A, B, C], "equations", cap=4, gold=GOLD) == [GOLD, C]
    assert select_distinct([A, B, C], "equations", cap=4) == [A, C]
    assert select_distinct([A, B, C], "text", cap=4) == [A, B, C]
    # Gold counts towards the cap.
    assert select_distinct([A, C], "equations", cap=1, gold=GOLD) == [GOLD]


def test_select_distinct_keeps_most_different():
    solutions = ["aaab", "aaab", "bbbb", "aabb", "aaaa"]
    # Gold "aaaa": candidates aaab (d=1), bbbb (4), aabb (2); "aaaa" is the gold's copy.
    # Pick bbbb; sums become aaab 1+3=4, aabb 2+2=4; the tie goes to the earlier aaab.
    assert select_distinct(solutions, "exact", cap=3, gold="aaaa") == ["aaaa", "aaab", "bbbb"]
    # No gold: start from the first (aaab); sums bbbb 3, aabb 1, aaaa 1 -> bbbb.
    assert select_distinct(solutions, "exact", cap=2) == ["aaab", "bbbb"]
    assert select_distinct([], "exact", cap=2, gold="g") == ["g"]
    with pytest.raises(UserError, match="max_per_question must be >= 1, got 0"):
        select_distinct(solutions, "exact", cap=0)


def test_dart_uniform_hand_values():
    # q0 has enough; q1 1/4 -> ceil(1*4/1)=4; q2 0/4 doubles: 4; q3 spent its budget;
    # q4 untried gets the target 2; q5 wants 15 but only 1 is left of the budget.
    got = dart_allocation([4, 1, 0, 0, 0, 1], [4, 4, 4, 16, 0, 15], min_correct=2, budget=16, mode="uniform")
    assert got == {1: 4, 2: 4, 4: 2, 5: 1}


def test_dart_prop2diff_hand_values():
    # fail rates 0, .75, 1, .25 -> targets 1, ceil(4*.75)=3, 4, ceil(4*.25)=1.
    # q1 has 2 of 3: ceil(1*8/2)=4 more; q2 none of 4: doubles to 8 (8 left of budget).
    got = dart_allocation([4, 2, 0, 3], [4, 8, 8, 4], min_correct=4, budget=16, mode="prop2diff")
    assert got == {1: 4, 2: 8}
    assert dart_allocation([2, 2], [2, 2], min_correct=4, budget=16, mode="prop2diff") == {}


@pytest.mark.parametrize("mode", ["uniform", "prop2diff"])
def test_dart_rounds_stop(mode):
    # Question i is solved by every period[i]-th sample (None: never). Sampling rounds must end
    # with each question at its target or at the budget.
    period, budget, min_correct = [1, 3, 7, None], 20, 3
    correct, tries = [0] * 4, [0] * 4
    for _ in range(50):
        extra = dart_allocation(correct, tries, min_correct, budget, mode)
        if not extra:
            break
        for i, n in extra.items():
            for _ in range(n):
                tries[i] += 1
                correct[i] += period[i] is not None and tries[i] % period[i] == 0
    else:
        pytest.fail("allocation never stopped")
    assert tries[3] == budget and correct[3] == 0
    assert all(t <= budget for t in tries)
    # q2 (1 in 7) reaches 2 correct in its 20 tries. prop2diff: q1's fail rate 2/3 sets its
    # target to ceil(3 * 2/3) = 2, so it stops sooner than under uniform.
    if mode == "uniform":
        assert (correct, tries) == ([3, 3, 2, 0], [3, 9, 20, 20])
    else:
        assert (correct, tries) == ([3, 2, 2, 0], [3, 6, 20, 20])


def test_dart_errors():
    with pytest.raises(ValueError, match="2 pass counts for 1 try counts"):
        dart_allocation([1, 2], [3], 1, 4)
    with pytest.raises(ValueError, match="question 0: 3 correct out of 2 tries"):
        dart_allocation([3], [2], 1, 4)
    with pytest.raises(UserError, match="min_correct must be >= 1, got 0"):
        dart_allocation([0], [0], 0, 4)
    with pytest.raises(UserError, match="budget must be >= 1, got 0"):
        dart_allocation([0], [0], 1, 0)


def test_star_hint_round_trip():
    prompt = star_hint_prompt("What is 3*4?", "12")
    assert "12" in prompt and prompt.startswith("What is 3*4?")
    assert strip_hint(prompt) == "What is 3*4?"
    assert strip_hint("What is 3*4?") == "What is 3*4?"


def test_rationales_that_cite_the_hint():
    assert mentions_hint("The hint says 12, so 3*4 = 12.")
    assert mentions_hint("Using the given answer of 12, we work backwards.")
    assert mentions_hint("We are told the answer is 12.")
    assert not mentions_hint("3 * 4 = 12, so the correct answer is 12.\nAnswer: 12")
