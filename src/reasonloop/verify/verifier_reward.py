"""A trained verifier as a reward: `verifier:<folder>` in an RL stage's `reward` list (or `verifier:<stage>`,
a verifier stage of the same recipe that ran before it).

Each completion is scored by the verifier (`reasonloop.verifier_model`) under the same chat prompt the policy
was given, and the reward is the verifier's P(correct) in [0, 1]. As a term beside `correct` it gives a graded
signal where the judge's is 0 or 1, e.g. `reward: [correct, "verifier:runs/v/stages/verifier/verifier"]` with
`reward_weights: [1.0, 0.5]`. The verifier is loaded on the first call, on the policy's device.
"""

from __future__ import annotations

from pathlib import Path

from reasonloop.metrics import sigmoid
from reasonloop.tasks.base import Problem
from reasonloop.tasks.prompt import prompt_text

PREFIX = "verifier:"


class VerifierReward:
    """`(completions, problems) -> P(correct)` per completion, from the verifier saved in `path`."""

    def __init__(self, path: str | Path, task=None, dtype: str = "auto", batch_tokens: int = 8192):
        from reasonloop.verifier_model import check_verifier_folder

        self.path = check_verifier_folder(path)  # a wrong path fails when the recipe's rewards are built
        self.task, self.dtype, self.batch_tokens = task, dtype, batch_tokens
        self._model = self._tok = None

    def _load(self):
        if self._model is None:
            from reasonloop.verifier_model import load_verifier

            self._model, self._tok = load_verifier(self.path, dtype=self.dtype)
        return self._model, self._tok

    def __call__(self, completions: list[str], problems: list[Problem]) -> list[float]:
        from reasonloop.config import TaskConfig
        from reasonloop.verifier_model import score_solutions

        model, tok = self._load()
        task = self.task or TaskConfig()
        prompts = [prompt_text(tok, p.question, task.prompt, task.answer_format) for p in problems]
        return [sigmoid(x) for x in score_solutions(model, tok, prompts, completions, self.batch_tokens)]


def verifier_reward(path: str, task=None) -> VerifierReward:
    """Factory for code that builds rewards itself: `verifier_reward("runs/v/stages/verifier/verifier")`."""
    return VerifierReward(path, task)
