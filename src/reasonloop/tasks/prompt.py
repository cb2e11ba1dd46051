"""Prompts through the model's chat template, and gold responses in the requested answer format."""

from __future__ import annotations

from functools import lru_cache

from reasonloop.tasks.base import Problem

INSTRUCTIONS = {
    "answer_line": "Solve it step by step, then give the final answer on a last line 'Answer: <number>'.",
    "hash": "Solve it step by step, then give the final answer on a last line '#### <number>'.",
    "boxed": "Solve it step by step, then give the final answer as \\boxed{<number>}.",
    "program": "Solve the problem by writing a Python program that prints the final answer as a number, "
               "in one ```python block.",
}


def answer_line(answer: str, answer_format: str) -> str:
    if answer_format == "program":  # the smallest program that gives this answer
        return f"```python\nprint({answer!r})\n```"
    return {"answer_line": f"Answer: {answer}", "hash": f"#### {answer}",
            "boxed": f"The answer is \\boxed{{{answer}}}."}[answer_format]


def gold_response(problem: Problem, answer_format: str, strip_calculator: bool = True) -> str | None:
    """The gold chain of thought ending in the answer line, or None when the task has no reasoning."""
    if problem.reasoning is None:
        return None
    if answer_format == "program":
        return problem.reasoning  # already a fenced program that prints the answer (tasks/pot.py)
    reasoning = problem.reasoning
    if strip_calculator:
        from reasonloop.tasks.gsm8k import strip_calculator as strip

        reasoning = strip(reasoning)
    return f"{reasoning.strip()}\n{answer_line(problem.answer, answer_format)}"


def user_text(question: str, prompt_cfg, answer_format: str) -> str:
    instruction = prompt_cfg.instruction if prompt_cfg.instruction is not None else INSTRUCTIONS[answer_format]
    return prompt_cfg.template.format(question=question, instruction=instruction).strip()


@lru_cache(maxsize=64)
def _default_system_prefix(tokenizer) -> str:
    """The text a chat template inserts as its default system turn ('' when it adds none).

    Rendered twice, with and without an explicit system message: everything after the system turn is
    shared, so the part before the shared suffix in the plain rendering is the default system turn.
    """
    user = [{"role": "user", "content": "\u2063"}]
    plain = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    with_sys = tokenizer.apply_chat_template([{"role": "system", "content": "\u2064"}] + user,
                                             tokenize=False, add_generation_prompt=True)
    n = 0
    while n < min(len(plain), len(with_sys)) and plain[-1 - n] == with_sys[-1 - n]:
        n += 1
    # The shared suffix starts inside the system turn's closing tokens; give them back to that turn.
    sys_only = tokenizer.apply_chat_template([{"role": "system", "content": "\u2064"}], tokenize=False)
    closing = sys_only[sys_only.index("\u2064") + 1:]
    suffix = plain[len(plain) - n:]
    cut = len(plain) - n + (len(closing) if closing and suffix.startswith(closing) else 0)
    prefix = plain[:cut]
    return prefix if "\u2063" not in prefix else ""


def prompt_text(tokenizer, question: str, prompt_cfg, answer_format: str) -> str:
    messages = [{"role": "user", "content": user_text(question, prompt_cfg, answer_format)}]
    if prompt_cfg.system is not None:
        messages.insert(0, {"role": "system", "content": prompt_cfg.system})
    if tokenizer.chat_template is None:
        return messages[-1]["content"] + "\n"
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prompt_cfg.system is None and prompt_cfg.drop_default_system:
        prefix = _default_system_prefix(tokenizer)
        if prefix and text.startswith(prefix):
            text = text[len(prefix):]
    return text


def encode_prompt(tokenizer, text: str) -> list[int]:
    # The chat template already holds any special tokens the model needs.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of prompt + response + end-of-turn, and the number of prompt tokens (not trained on)."""
    p = encode_prompt(tokenizer, prompt)
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return p + r + ([eos] if eos is not None else []), len(p)
