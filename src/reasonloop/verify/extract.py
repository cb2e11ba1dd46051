"""Pull the final answer out of a model's completion.

Four strategies, each callable on its own and tried in a configurable order by `extract_answer`:

- ``answer_line``: the last line holding ``Answer: ...`` (case-insensitive; ``Final answer:`` and
  markdown bold ``**Answer:**`` count too) — the format the default prompt asks for.
- ``hash``: the last ``#### N`` (GSM8K's gold format, Cobbe et al. 2021).
- ``boxed``: the content of the last ``\\boxed{...}`` with balanced braces (MATH, Hendrycks et al. 2021).
- ``last_number``: the last number in the text, the usual GSM8K fallback.

Every strategy returns the answer cleaned by `clean_answer` (``$``, markdown and a trailing ``.``
removed, ``1,000`` -> ``1000``) or None when it finds nothing. Units ("18 dollars") are kept:
deciding that "18 dollars" equals "18" is `equiv.answers_match`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from reasonloop.errors import UserError

# A number with valid thousands groups (1,000,000) or plain digits, optional decimals.
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
# The minus must not follow a digit or letter, so "5-3" yields 3, not -3.
_LAST_NUMBER = re.compile(rf"(?<![\w.])-?\$?(?:{_NUMBER})(?:/\d+(?!\.\d))?")
_GROUPED = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ANSWER_LINE = re.compile(r"\banswer(?:\*\*|__)?\s*[:：]\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_HASH = re.compile(r"####\s*(.*)$", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def clean_answer(text: str) -> str | None:
    """Normalise an extracted answer: strip markdown, ``$``, a trailing ``.``; drop thousands commas.

    Returns None when nothing is left. ``\\boxed{x}`` inside the answer (``Answer: \\boxed{5}``)
    is unwrapped.
    """
    text = text.strip()
    inner = extract_boxed(text) if _BOXED.search(text) else None
    if inner is not None:
        text = inner
    # Markdown emphasis and code marks around the answer ("**42**", "`42`").
    text = text.strip().strip("*_`").strip()
    # "$" is both a dollar sign and a LaTeX delimiter: either way it carries no value.
    text = text.replace("\\$", "").replace("$", "").strip()
    # A sentence-final period ("42.") but not a decimal point ("4.5") or an ellipsis.
    while text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    text = text.strip("*_` ")
    if _GROUPED.match(text):
        text = text.replace(",", "")
    return text or None


def extract_answer_line(text: str) -> str | None:
    """The value after the last ``Answer:`` (rest of that line); None when there is none."""
    matches = _ANSWER_LINE.findall(text)
    for value in reversed(matches):
        cleaned = clean_answer(value)
        if cleaned is not None:
            return cleaned
    return None


def extract_hash(text: str) -> str | None:
    """The value after the last ``####`` (rest of that line); None when there is none."""
    matches = _HASH.findall(text)
    for value in reversed(matches):
        cleaned = clean_answer(value)
        if cleaned is not None:
            return cleaned
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` whose braces balance; None when there is none.

    Nested braces are followed (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); an unclosed box
    (generation cut off) is skipped in favour of an earlier complete one.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    inner = text[start:i].strip()
                    if inner:
                        return clean_answer(inner)
                    break
    return None


def extract_last_number(text: str) -> str | None:
    """The last number in the text (``-3``, ``1,000``, ``2.5``, ``3/4``, ``$18``), cleaned."""
    matches = _LAST_NUMBER.findall(text)
    return clean_answer(matches[-1]) if matches else None


STRATEGIES: dict[str, Callable[[str], str | None]] = {
    "answer_line": extract_answer_line,
    "hash": extract_hash,
    "boxed": extract_boxed,
    "last_number": extract_last_number,
}
DEFAULT_STRATEGIES = ("answer_line", "hash", "boxed", "last_number")


def extract_answer(text: str, strategies: list[str] | tuple[str, ...] = DEFAULT_STRATEGIES) -> str | None:
    """The answer found by the first strategy (in the given order) that finds one, else None."""
    for name in strategies:
        if name not in STRATEGIES:
            raise UserError(f"task.extract: unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
        found = STRATEGIES[name](text)
        if found is not None:
            return found
    return None
