"""Rewards: plain functions ``(completions, problems) -> list[float]`` (TRL's reward protocol).

Built-ins, chosen by name in a recipe's ``reward`` list:

- ``correct``: 1 when the extracted answer is right, else 0.
- ``partial``: ReFT's shaping ("ReFT: Reasoning with Reinforced Fine-Tuning", Luong et al. 2024):
  1 correct, 0.1 an answer could be extracted but is wrong, 0 no answer.
- ``format``: 1 when the completion holds an answer in the requested format (``Answer:`` line,
  ``#### N`` or ``\\boxed{}``), whatever its value.

Any other entry ``package.module:function`` is imported and called as ``function(completions,
problems)``. Several rewards are summed with weights. Problems whose ``source`` starts with
``gym:`` are judged by reasoning-gym's own ``score_answer`` (full score = correct).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.verify.equiv import answers_match, gym_score, is_gym
from reasonloop.verify.extract import DEFAULT_STRATEGIES, STRATEGIES, extract_answer

RewardFn = Callable[[list[str], list[Problem]], list[float]]

PARTIAL_WRONG = 0.1
"""ReFT's reward for an extracted but wrong answer."""


def is_correct(completion: str, problem: Problem, extract: Sequence[str] = DEFAULT_STRATEGIES,
               rel_tol: float = 1e-4) -> bool:
    """Does the completion's extracted answer equal the problem's gold answer?

    For reasoning-gym problems: the dataset's ``score_answer`` gives full marks (>= 1).
    """
    if problem.meta.get("format") == "pot":  # program-of-thought: run the program in the sandbox
        from reasonloop.verify.pot import pot_reward

        return pot_reward([completion], [problem])[0] == 1.0
    answer = extract_answer(completion, extract)
    if is_gym(problem):
        return gym_score(answer, problem) >= 1.0
    return answers_match(answer, problem.answer, rel_tol)


def correct_reward(extract: Sequence[str] = DEFAULT_STRATEGIES, rel_tol: float = 1e-4) -> RewardFn:
    """1.0 per correct completion, 0.0 otherwise."""
    def correct(completions: list[str], problems: list[Problem]) -> list[float]:
        if problems and all(p.meta.get("format") == "pot" for p in problems):
            from reasonloop.verify.pot import pot_reward

            return pot_reward(completions, problems)  # programs run in parallel in the sandbox
        return [float(is_correct(c, p, extract, rel_tol)) for c, p in zip(completions, problems)]
    return correct


def partial_reward(extract: Sequence[str] = DEFAULT_STRATEGIES, rel_tol: float = 1e-4) -> RewardFn:
    """ReFT: 1 correct, 0.1 extracted but wrong, 0 nothing extracted."""
    def partial(completions: list[str], problems: list[Problem]) -> list[float]:
        if problems and all(p.meta.get("format") == "pot" for p in problems):
            from reasonloop.verify.pot import pot_partial_reward

            return pot_partial_reward(completions, problems)
        out = []
        for completion, problem in zip(completions, problems):
            answer = extract_answer(completion, extract)
            if answer is None:
                out.append(0.0)
                continue
            right = (gym_score(answer, problem) >= 1.0 if is_gym(problem)
                     else answers_match(answer, problem.answer, rel_tol))
            out.append(1.0 if right else PARTIAL_WRONG)
        return out
    return partial


def format_reward(answer_format: str = "answer_line") -> RewardFn:
    """1.0 when the completion holds an answer written in ``answer_format``, else 0.0."""
    if answer_format not in STRATEGIES or answer_format == "last_number":
        raise UserError(f"task.answer_format: {answer_format!r} is not a format the `format` reward "
                        "can check; use answer_line, hash or boxed")
    find = STRATEGIES[answer_format]

    def format_ok(completions: list[str], problems: list[Problem]) -> list[float]:
        return [float(find(c) is not None) for c in completions]
    return format_ok


def load_reward(spec: str, where: str = "reward") -> RewardFn:
    """Import ``package.module:function`` and check that it is callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{where}: {spec!r} is not a built-in reward (correct, partial, format) "
                        "nor an import path `package.module:function`")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise UserError(f"{where}: reward {spec!r}: module {module_name!r} not found "
                            "(is it installed or on PYTHONPATH?)") from None
        raise UserError(f"{where}: reward {spec!r}: importing {module_name!r} failed: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing
        raise UserError(f"{where}: reward {spec!r}: importing {module_name!r} failed: "
                        f"{type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserError(f"{where}: reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise UserError(f"{where}: reward {spec!r}: {attr!r} is not callable (it is {type(fn).__name__})")
    return fn


def check_rewards(values, name: str, expected: int) -> list[float]:
    """Validate what a reward function returned: a list of ``expected`` finite numbers.

    Raises UserError naming the reward function; returns the values as floats.
    """
    if hasattr(values, "tolist"):  # a numpy array or torch tensor
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise UserError(f"reward {name!r} returned a {type(values).__name__}; "
                        f"it must return a list of {expected} floats")
    if len(values) != expected:
        raise UserError(f"reward {name!r} returned {len(values)} values for {expected} completions")
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, Real):
            raise UserError(f"reward {name!r} returned a non-number at index {i}: {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"reward {name!r} returned {value} at index {i}; rewards must be finite")
        out.append(value)
    return out


@dataclass
class CombinedReward:
    """A weighted sum of named reward functions; itself a reward function."""

    names: list[str]
    fns: list[RewardFn]
    weights: list[float]

    def breakdown(self, completions: list[str], problems: list[Problem]) -> tuple[list[float], dict[str, list[float]]]:
        """Total reward per completion and each function's checked values (for logging)."""
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
        parts = {}
        total = [0.0] * len(completions)
        for name, fn, weight in zip(self.names, self.fns, self.weights):
            try:
                raw = fn(completions, problems)
            except Exception as err:  # user code: name it instead of a traceback from inside it
                raise UserError(f"reward function {name!r} raised {type(err).__name__}: {err}") from err
            values = check_rewards(raw, name, len(completions))
            parts[name] = values
            total = [t + weight * v for t, v in zip(total, values)]
        return total, parts

    def __call__(self, completions: list[str], problems: list[Problem]) -> list[float]:
        return self.breakdown(completions, problems)[0]


def build_reward(names: list[str], weights: list[float] | None = None,
                 extract: Sequence[str] = DEFAULT_STRATEGIES, rel_tol: float = 1e-4,
                 answer_format: str = "answer_line", where: str = "reward") -> CombinedReward:
    """Turn a recipe's ``reward`` / ``reward_weights`` lists into one reward function.

    ``answer_format`` is what the ``format`` reward checks (the task's ``answer_format``);
    ``where`` is the recipe field named in error messages (e.g. ``stages[2].reward``).
    """
    if not names:
        raise UserError(f"{where}: the list of reward functions is empty")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise UserError(f"{where}: {len(weights)} reward_weights for {len(names)} reward functions")
    builtins = {
        "correct": lambda: correct_reward(extract, rel_tol),
        "partial": lambda: partial_reward(extract, rel_tol),
        "format": lambda: format_reward(answer_format),
    }
    fns = [builtins[n]() if n in builtins else load_reward(n, where) for n in names]
    return CombinedReward(list(names), fns, [float(w) for w in weights])
