"""SFT examples: (prompt, response) pairs tokenised through the chat template, and Masked Thought."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.tasks.files import read_jsonl
from reasonloop.tasks.prompt import encode_example, gold_response, prompt_text


@dataclass
class Example:
    ids: list[int]  # prompt + response + end-of-turn
    n_prompt: int  # tokens not trained on
    problem_id: str = ""


def examples_from_pairs(tokenizer, pairs: list[tuple[str, str, str]], max_length: int) -> list[Example]:
    """(problem_id, prompt text, response text) -> tokenised examples, truncated to max_length."""
    out = []
    for pid, prompt, response in pairs:
        ids, n_prompt = encode_example(tokenizer, prompt, response)
        if n_prompt >= max_length:
            continue  # nothing of the response would be left to train on
        out.append(Example(ids[:max_length], n_prompt, pid))
    return out


def gold_pairs(tokenizer, problems, task_cfg) -> list[tuple[str, str, str]]:
    pairs = []
    for p in problems:
        response = gold_response(p, task_cfg.answer_format, task_cfg.strip_calculator)
        if response is None:
            continue
        pairs.append((p.id, prompt_text(tokenizer, p.question, task_cfg.prompt, task_cfg.answer_format),
                      response))
    if not pairs:
        raise UserError("sft: the task has no gold reasoning to train on; use `data: jsonl` with "
                        "`data_path` (prompt/response pairs)")
    return pairs


def jsonl_pairs(tokenizer, path: str, task_cfg) -> list[tuple[str, str, str]]:
    """JSONL with `prompt` (or `question`) and `response`; a question is put through the chat template."""
    pairs = []
    for where, rec in read_jsonl(path):
        prompt = rec.get("prompt")
        if prompt is None and rec.get("question") is not None:
            prompt = prompt_text(tokenizer, str(rec["question"]), task_cfg.prompt, task_cfg.answer_format)
        if prompt is None:
            raise UserError(f"{where}: missing field 'prompt' (or 'question')")
        response = rec.get("response")
        if response is None or not str(response).strip():
            raise UserError(f"{where}: empty or missing field 'response'")
        pairs.append((str(rec.get("id", where)), str(prompt), str(response)))
    if not pairs:
        raise UserError(f"{path}: no examples")
    return pairs


def masked_thought(input_ids: torch.Tensor, trainable: torch.Tensor, fraction: float, mask_id: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Masked Thought (Chen et al. 2024, "Masked Thought: Simply Masking Partial Reasoning Steps Can
    Improve Mathematical Reasoning Learning of Language Models"): replace `fraction` of the response
    (reasoning) input tokens with `mask_id`; the targets stay the original tokens.

    input_ids [N]; trainable [N] bool marks response tokens that may be masked.
    """
    if fraction <= 0:
        return input_ids
    drop = (torch.rand(input_ids.shape, generator=generator) < fraction) & trainable  # [N]
    return torch.where(drop, torch.full_like(input_ids, mask_id), input_ids)


def shuffled_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def curriculum_order(curriculum, examples: list[Example], problems: dict[str, Problem],
                     measured: dict[str, float] | None, seed: int, where: str):
    """The SFT loop's `order_fn` for a stage's `curriculum` section (None: the plain shuffle).

    Each example's difficulty is that of its problem (`problems` by id; RFT's several paths of one question
    share it); an example whose problem is not there (a JSONL pair with an unknown id) has no difficulty of
    its own and `normalise` gives it the median. ``measured``: pass rates by problem id (`pass_rate`).
    """
    from reasonloop.curriculum import estimate_difficulty
    from reasonloop.curriculum.sft_order import epoch_order

    if curriculum.scheduler == "none":
        return None
    unknown = Problem(id="", question="", answer="")
    per_example = [problems.get(e.problem_id, unknown) for e in examples]
    kind = curriculum.difficulty
    diffs = estimate_difficulty(kind, per_example, (measured or {}) if kind == "pass_rate" else None,
                                where=where)
    return epoch_order(curriculum.scheduler, diffs, seed)
