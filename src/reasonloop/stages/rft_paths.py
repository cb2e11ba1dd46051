"""Pure choices for rejection-sampling fine-tuning: which correct paths to keep, whom to sample more.

- `dedup_key` / `select_distinct`: RFT ("Scaling Relationship on Learning Mathematical Reasoning
  with LLMs", Yuan et al. 2023) keeps *distinct reasoning paths*: solutions computing the same
  equation list are one path; more distinct paths help more than more copies.
- `dart_allocation` (the curriculum's RFT schedule, `reasonloop.curriculum.budget`, re-exported here):
  DART-Math's sampling budget by measured pass rate.
- `star_hint_prompt` / `strip_hint` / `mentions_hint`: STaR ("Self-Taught Reasoner", Zelikman et
  al. 2022) rationalisation: re-ask an unsolved question with its answer as a hint, then train on
  the rationale *without* the hint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from reasonloop.curriculum.budget import dart_allocation  # noqa: F401  (the RFT loop's schedule)
from reasonloop.errors import UserError
from reasonloop.verify.equations import extract_equations

DedupMode = Literal["equations", "text", "exact"]


def dedup_key(text: str, mode: DedupMode = "equations") -> str:
    """The key under which two solutions count as the same path.

    - ``exact``: the text itself.
    - ``text``: lower-cased, whitespace collapsed.
    - ``equations``: the ordered normalised equations (`verify.equations.extract_equations`),
      joined with ``|``. A solution with no equations falls back to its ``text`` key, so that
      distinct equation-free solutions are not all merged into one path. Prefixes ``eq:`` and
      ``text:`` keep the two kinds of key from colliding.
    """
    if mode == "exact":
        return text
    text_key = " ".join(text.lower().split())
    if mode == "text":
        return text_key
    if mode == "equations":
        equations = extract_equations(text)
        return "eq:" + "|".join(equations) if equations else "text:" + text_key
    raise ValueError(f"unknown dedup mode {mode!r}; use equations, text or exact")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; cost 1 each).

    Bit-parallel (Myers 1999, Hyyrö 2003 form): one pass over ``a`` with Python ints as bit
    vectors over ``b``, so long text keys stay cheap without a compiled dependency.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    masks: dict[str, int] = {}
    for i, ch in enumerate(b):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m  # vertical +1 / -1 deltas of the DP column
    for ch in a:
        eq = masks.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def select_distinct(solutions: Sequence[str], mode: DedupMode = "equations", cap: int = 4,
                    gold: str | None = None) -> list[str]:
    """Distinct paths of one question, at most ``cap`` of them, gold first when given.

    The first solution of each `dedup_key` is kept; one sharing the gold's key is a copy of the
    gold. The gold counts towards ``cap``. When more than ``cap`` remain, the most different are
    kept: starting from the gold (or the first kept solution), repeatedly add the candidate with
    the largest summed `levenshtein` distance between its key and the chosen ones' keys; ties go
    to the earlier solution. The result lists gold, then chosen solutions in input order.
    """
    if cap < 1:
        raise UserError(f"max_per_question must be >= 1, got {cap}")
    chosen_keys: list[str] = []
    result: list[str] = []
    if gold is not None:
        chosen_keys.append(dedup_key(gold, mode))
        result.append(gold)
    seen = set(chosen_keys)
    candidates: list[tuple[str, str]] = []  # (key, solution), first of each key, input order
    for solution in solutions:
        key = dedup_key(solution, mode)
        if key not in seen:
            seen.add(key)
            candidates.append((key, solution))
    room = cap - len(result)
    if len(candidates) <= room:
        return result + [s for _, s in candidates]
    picked: set[int] = set()
    if not chosen_keys:
        picked.add(0)
        chosen_keys.append(candidates[0][0])
    # Summed distance of each candidate to everything chosen so far, updated incrementally.
    summed = [sum(levenshtein(k, c) for c in chosen_keys) for k, _ in candidates]
    while len(picked) < room:
        best = max((i for i in range(len(candidates)) if i not in picked), key=lambda i: (summed[i], -i))
        picked.add(best)
        for i, (key, _) in enumerate(candidates):
            if i not in picked:
                summed[i] += levenshtein(key, candidates[best][0])
    return result + [candidates[i][1] for i in sorted(picked)]


# --------------------------------------------------------------------------- STaR

HINT_PREFIX = "\n(Hint: the correct final answer is "
HINT_SUFFIX = ". Explain step by step how to reach it.)"

# Phrases by which a rationale leans on the hint instead of deriving the answer. "the correct
# answer is" is deliberately absent: models write it when concluding on their own.
_HINT_PHRASES = re.compile(
    r"\bhints?\b|\b(?:given|provided|stated) (?:final )?answer\b"
    r"|\bwe (?:are|were) told (?:that )?the answer\b|\bthe answer (?:is|was) (?:given|provided)\b",
    re.IGNORECASE,
)


def star_hint_prompt(question: str, gold_answer: str) -> str:
    """STaR rationalisation prompt: the question with the gold answer appended as a hint."""
    return f"{question}{HINT_PREFIX}{gold_answer}{HINT_SUFFIX}"


def strip_hint(prompt: str) -> str:
    """The question back from a `star_hint_prompt`: training pairs the rationale with this, since
    at test time there is no hint. A prompt without the hint is returned unchanged."""
    start = prompt.rfind(HINT_PREFIX)
    if start >= 0 and prompt.endswith(HINT_SUFFIX):
        return prompt[:start]
    return prompt


def mentions_hint(rationale: str) -> bool:
    """Does a rationale refer to the hint ("the hint says 42", "the given answer is")?

    Such a rationale makes no sense once the hint is removed from the prompt, so the RFT stage
    drops it rather than train the model to cite an answer it will not be given.
    """
    return _HINT_PHRASES.search(rationale) is not None
