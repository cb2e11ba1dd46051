"""Judging answers: extraction, equivalence, rewards, and the sandbox for program-of-thought.

The public judge: `is_correct(completion, gold, task)` and `canonical_answer(answer)` (what maj@k votes
on); `judge(completions, problems, task)` judges a batch at once.
"""

from reasonloop.verify.judge import Verdict, canonical_answer, is_correct, judge

__all__ = ["Verdict", "canonical_answer", "is_correct", "judge"]
