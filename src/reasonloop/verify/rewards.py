"""Rewards: plain functions ``(completions, problems) -> list[float]`` (TRL's reward protocol).

Built-ins, chosen by name in a recipe's ``reward`` list:

- ``correct``: 1 when the extracted answer is right, else 0.
- ``partial``: ReFT's shaping ("ReFT: Reasoning with Reinforced Fine-Tuning", Luong et al. 2024):
  1 correct, 0.1 wrong but given in the task's answer format, 0 no answer in that format (a number
  found only by a fallback extractor such as ``last_number`` earns nothing).
- ``format``: 1 when the completion holds an answer in the task's format (``Answer:`` line,
  ``#### N`` or ``\\boxed{}``), whatever its value.

The built-ins score the one `reasonloop.verify.judge` verdict per completion (for program-of-thought,
the program's printed result); reasoning-gym problems are judged by the dataset's ``score_answer``.

Any other entry ``package.module:function`` is imported and called in one of two conventions, told apart by
its signature (`calling_convention`):

- reasonloop's: ``function(completions, problems)``, positionally, with `Problem` objects;
- TRL's (``GRPOTrainer``): ``function(completions, **kwargs)``: a function with a ``**kwargs`` parameter and
  none named ``problems`` is called with keywords only: ``completions``, ``prompts`` (the questions) and one
  list per dataset column (`trl_columns`), e.g. ``answer`` or a JSONL file's own ``Answer``.

``verifier:<folder>`` scores each completion with a trained verifier (`reasonloop.verify.verifier_reward`):
the reward is its P(correct); in an RL stage ``verifier:<stage>`` names a verifier stage that ran before.

Several rewards are summed with weights.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.verify.judge import Verdict, judge

RewardFn = Callable[[list[str], list[Problem]], list[float]]

PARTIAL_WRONG = 0.1
"""ReFT's reward for an answer in the asked format that is wrong."""


@dataclass
class VerdictReward:
    """A built-in reward: a score of each completion's `Verdict`, so one judgement serves every built-in
    reward and the accuracy metric. Callable as a plain reward function too (it then judges itself)."""

    score: Callable[[Verdict], float]
    task: object = None  # the recipe's TaskConfig (None: defaults)

    def __call__(self, completions: list[str], problems: list[Problem]) -> list[float]:
        return [self.score(v) for v in judge(completions, problems, self.task)]


def _correct(v: Verdict) -> float:
    return float(v.correct)


def _partial(v: Verdict) -> float:
    """ReFT: 1 correct, 0.1 wrong but in the asked answer format, 0 no answer in that format."""
    return 1.0 if v.correct else PARTIAL_WRONG if v.formatted else 0.0


def _format(v: Verdict) -> float:
    return float(v.formatted)


BUILTIN_REWARDS: dict[str, Callable[[Verdict], float]] = {"correct": _correct, "partial": _partial,
                                                          "format": _format}
"""Built-in rewards by the name a recipe's ``reward`` list uses."""


def correct_reward(task=None) -> VerdictReward:
    """1.0 per correct completion, 0.0 otherwise."""
    return VerdictReward(_correct, task)


def partial_reward(task=None) -> VerdictReward:
    """ReFT: 1 correct, 0.1 a wrong answer in the task's answer format, 0 none."""
    return VerdictReward(_partial, task)


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
    return TrlReward(fn) if calling_convention(fn) == "trl" else fn


def calling_convention(fn) -> str:
    """'trl' for a function written for TRL's GRPOTrainer (a ``**kwargs`` parameter and no ``problems``
    parameter: TRL calls every reward with keywords only), else 'positional' (``fn(completions, problems)``).
    A callable without a readable signature (a C function) is taken as positional."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "positional"
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return "trl" if takes_kwargs and not any(p.name == "problems" for p in params) else "positional"


def trl_columns(problems: list[Problem]) -> dict[str, list]:
    """The keyword lists a TRL-style reward receives besides ``completions``, one entry per completion.

    ``prompts``: the question asked; ``question``, ``answer`` (the gold final answer), ``reasoning``,
    ``difficulty``, ``id``: the problem's fields; then every column of the source record under its own name
    (JSONL/Parquet/HF sources keep it in ``meta['record']``), None where a record lacks it. The problem's
    fields win a clash (a GSM8K record's ``answer`` is the whole solution; the gold answer is what is judged).
    ``problems`` is passed too, for rewards that want the `Problem` objects.
    """
    columns: dict[str, list] = {
        "prompts": [p.question for p in problems], "question": [p.question for p in problems],
        "answer": [p.answer for p in problems], "reasoning": [p.reasoning for p in problems],
        "difficulty": [p.difficulty for p in problems], "id": [p.id for p in problems],
        "problems": list(problems)}
    records = [p.meta.get("record") or {} for p in problems]
    for key in dict.fromkeys(k for rec in records for k in rec):  # first-seen order, no repeats
        if key not in columns and key != "completions":
            columns[key] = [rec.get(key) for rec in records]
    return columns


@dataclass
class TrlReward:
    """A TRL-style reward function adapted to reasonloop's ``(completions, problems)`` protocol."""

    fn: Callable[..., list[float]]

    def __call__(self, completions: list[str], problems: list[Problem]) -> list[float]:
        return self.fn(completions=completions, **trl_columns(problems))


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
    task: object = None  # judges the completions for the built-in rewards

    def breakdown(self, completions: list[str], problems: list[Problem],
                  verdicts: list[Verdict] | None = None) -> tuple[list[float], dict[str, list[float]]]:
        """Total reward per completion and each function's checked values (for logging).

        ``verdicts`` (from `judge`) are reused by the built-in rewards; without them the completions are
        judged here, once for all built-ins.
        """
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
        if verdicts is None and any(isinstance(fn, VerdictReward) for fn in self.fns):
            verdicts = judge(completions, problems, self.task)
        parts = {}
        total = [0.0] * len(completions)
        for name, fn, weight in zip(self.names, self.fns, self.weights):
            if isinstance(fn, VerdictReward):
                values = [fn.score(v) for v in verdicts]
            else:
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


def build_reward(names: list[str], weights: list[float] | None = None, task=None,
                 where: str = "reward") -> CombinedReward:
    """Turn a recipe's ``reward`` / ``reward_weights`` lists into one reward function.

    ``task`` is the recipe's task section (how answers are judged); ``where`` is the recipe field named
    in error messages (e.g. ``stages[2].reward``).
    """
    if not names:
        raise UserError(f"{where}: the list of reward functions is empty")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise UserError(f"{where}: {len(weights)} reward_weights for {len(names)} reward functions")
    if "format" in names and task is not None and task.answer_format == "program":
        raise UserError(f"{where}: the `format` reward checks a written answer line; with "
                        "task.answer_format: program use `partial` (a program that ran and printed)")
    fns = [VerdictReward(BUILTIN_REWARDS[n], task) if n in BUILTIN_REWARDS else
           _verifier_reward(n, task, where) if n.startswith("verifier:") else load_reward(n, where) for n in names]
    return CombinedReward(list(names), fns, [float(w) for w in weights], task)


def _verifier_reward(name: str, task, where: str) -> RewardFn:
    from reasonloop.verify.verifier_reward import PREFIX, VerifierReward

    path = name[len(PREFIX):]
    if not path:
        raise UserError(f"{where}: {name!r}: name the verifier folder, e.g. verifier:runs/v/stages/verifier/verifier")
    try:
        return VerifierReward(path, task)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
