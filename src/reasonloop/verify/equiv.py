"""Is a predicted answer the gold answer?

`answers_match` is called for every sample, so it tries the cheap checks first:

1. both sides parse as plain numbers (``3/4``, ``$1,000``, ``-0``, ``25%``, ``18 dollars``, ``x = 5``
   all parse) -> `numbers_match`: an integer gold answer must be matched exactly, any other within a
   tolerance that is absolute unless the task says ``tolerance_mode: relative``;
2. normalised string equality (case, spaces, a trailing period);
3. math-verify (Hugging Face) for LaTeX and symbolic answers (``\\frac{1}{\\sqrt{2}}`` vs
   ``\\frac{\\sqrt{2}}{2}``), with parses cached and a timeout when the caller is on the main thread;
   only for answers that look like math (`looks_mathematical`), as it is slow on prose.

`gym_score` delegates to reasoning-gym's own ``score_answer`` for problems from that source.
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem

# Seconds math-verify may spend on one parse or comparison. It enforces this with SIGALRM, which
# only works on the main thread; elsewhere it is called without a timeout (see `_mv_timeout`).
MATH_VERIFY_TIMEOUT_S = 3

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# Optional leading words ("x =", "The total is"), a number or a fraction, an optional percent
# sign and trailing unit words ("dollars", "km/h"). Anything else (operators, a second number,
# LaTeX) is not a plain number and goes to the later checks.
_PLAIN_NUMBER = re.compile(
    rf"^(?:[A-Za-z][A-Za-z\s]*+[:=]?\s*)?"
    rf"(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?\s*%?"
    rf"(?:\s*[A-Za-z°][A-Za-z°/\s.]*+)?$"
)


def parse_number(text: str) -> float | None:
    """The value of a plain numeric answer, or None when the text is not one.

    Percent signs are dropped, not divided by 100: GSM8K writes the gold answer of a percentage
    question as the bare number (``25`` for 25%), and models write ``25%``.
    """
    text = text.strip().replace("\u2212", "-").replace("{,}", ",").replace("\\%", "%")
    text = text.replace("\\$", "").replace("$", "").strip().rstrip(".").strip()
    match = _PLAIN_NUMBER.match(text)
    if match is None:
        return None
    value = float(match["num"].replace(",", ""))
    if match["den"] is not None:
        den = float(match["den"].replace(",", ""))
        if den == 0:
            return None
        value /= den
    return value


@lru_cache(maxsize=65536)
def _parse_number_cached(text: str) -> float | None:
    return parse_number(text)


def numbers_match(pred: float, gold: float, tolerance: float = 1e-4, relative: bool = False) -> bool:
    """Is the predicted number the gold one?

    An integer gold value (``1000``, ``1,000``, ``1000.0``) is matched exactly: a tolerance exists for
    rounded decimals, and off-by-one integers must never pass (a relative 1e-2 accepted 990 for 1000).
    Other gold values accept ``|pred - gold| <= tolerance``, or ``<= tolerance * |gold|`` when
    ``relative`` (ReFT's own checker is absolute: ``abs(pred - gold) <= 1e-2``).
    """
    if pred == gold:
        return True
    if math.isfinite(gold) and gold == int(gold):
        return False
    return abs(pred - gold) <= (tolerance * abs(gold) if relative else tolerance)


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def _normalise(text: str) -> str:
    text = _TEXT_WRAPPER.sub(r"\1", text)
    return " ".join(text.lower().split()).strip(" .'\"`*")


def _mv_timeout() -> int | None:
    # math-verify raises ValueError when its SIGALRM timeout is used off the main thread.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=16384)
def _mv_parse(text: str) -> tuple:
    """math-verify parse of an answer string, wrapped in ``$..$`` so it is read as LaTeX math."""
    from math_verify import parse

    wrapped = text if "$" in text or "\\(" in text or "\\[" in text else f"${text}$"
    return tuple(parse(wrapped, parsing_timeout=_mv_timeout()))


_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")
_MAX_MATH_CHARS = 200


def looks_mathematical(text: str) -> bool:
    """Worth handing to math-verify: short, and no word of 3+ letters outside LaTeX commands.

    math-verify reads prose as products of symbols ("blue" -> b*l*u*e) and takes 0.1-0.15 s on a
    sentence; prose answers are settled by the string comparison instead.
    """
    return len(text) <= _MAX_MATH_CHARS and _WORD.search(_LATEX_COMMAND.sub(" ", text)) is None


def math_verify_match(pred: str, gold: str) -> bool:
    """math-verify's symbolic comparison of two answer strings (False when either does not parse)."""
    from math_verify import verify

    gold_parsed = _mv_parse(gold)
    if not gold_parsed:
        return False
    pred_parsed = _mv_parse(pred)
    if not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_mv_timeout()))


def answers_match(pred: str | None, gold: str, tolerance: float = 1e-4, relative: bool = False) -> bool:
    """True when the predicted answer equals the gold one (numeric, textual or symbolic).

    Numbers are compared by `numbers_match` with ``tolerance`` / ``relative``.
    """
    if pred is None:
        return False
    pred_value, gold_value = parse_number(pred), _parse_number_cached(gold)
    if pred_value is not None and gold_value is not None:
        return numbers_match(pred_value, gold_value, tolerance, relative)
    if _normalise(pred) == _normalise(gold):
        return True
    return looks_mathematical(pred) and looks_mathematical(gold) and math_verify_match(pred, gold)


def canonical_answer(answer: str | None):
    """What maj@k votes on: answers that `answers_match` reads as the same value share one key.

    A plain number (``18``, ``18.0``, ``$18``, ``18 dollars``) is its value, rounded to 9 significant
    digits so that float noise does not split votes; anything else is its normalised text. None stays None.
    """
    if answer is None:
        return None
    value = parse_number(answer)
    if value is None:
        return _normalise(answer)
    if not math.isfinite(value):
        return str(value)
    value = float(f"{value:.9g}") + 0.0  # + 0.0: -0.0 and 0.0 are one vote
    return int(value) if value == int(value) else value


# --------------------------------------------------------------------------- reasoning-gym


def is_gym(problem: Problem) -> bool:
    return problem.source.startswith("gym:")


@lru_cache(maxsize=None)
def _gym_score_fn(name: str):
    import reasoning_gym

    try:
        return reasoning_gym.get_score_answer_fn(name)
    except ValueError as err:
        raise UserError(f"reasoning-gym has no dataset {name!r} to score answers with ({err})") from None


def gym_score(answer: str | None, problem: Problem) -> float:
    """reasoning-gym's own ``score_answer(answer, entry)`` for a ``gym:<name>`` problem, in [0, 1].

    ``problem.meta["entry"]`` must hold the dataset entry. A scorer that crashes on the model's
    text scores it 0: the text is arbitrary model output, and one odd sample must not stop a run.
    """
    entry = problem.meta.get("entry")
    if not isinstance(entry, dict):
        raise UserError(f"problem {problem.id}: source {problem.source!r} needs meta['entry'] "
                        "(the reasoning-gym entry) to be scored")
    if answer is None:
        return 0.0
    name = entry.get("metadata", {}).get("source_dataset") or problem.source[len("gym:"):]
    score_fn = _gym_score_fn(name)
    try:
        return float(score_fn(answer, entry))
    except Exception:  # noqa: BLE001 - see docstring
        return 0.0
