"""The one way every stage samples and judges: decoding settings -> engine -> one verdict per sample.

Evaluation, RFT and RL all come through here, so a fix to sampling settings or judging reaches every
stage at once (DESIGN.md: "One way to sample and judge").

Under torchrun, `sample_and_judge` shards: each rank samples every N-th problem once and every rank gets
all results back, in order. Each sample is seeded by (seed, prompt, sample index) alone, so 1 process and
N processes draw the same samples (issue #21).
"""

from __future__ import annotations

import dataclasses
import time

from reasonloop import dist
from reasonloop.generate.base import Sample, SamplingParams
from reasonloop.generate.sampling import prompt_seed
from reasonloop.tasks.base import Problem
from reasonloop.tasks.prompt import encode_prompt, prompt_text
from reasonloop.verify.judge import Verdict, judge


def sampling_params(decoding, n: int, seed: int = 0, greedy: bool = False) -> SamplingParams:
    """A recipe's `Decoding` section as engine settings; ``greedy`` keeps only its length and stops."""
    if greedy:
        return SamplingParams(n=n, temperature=0.0, max_new_tokens=decoding.max_new_tokens,
                              stop=tuple(decoding.stop), seed=seed)
    return SamplingParams(n=n, temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k,
                          min_p=decoding.min_p, max_new_tokens=decoding.max_new_tokens,
                          stop=tuple(decoding.stop), seed=seed)


def prompts_for(tokenizer, questions: list[str], task_cfg) -> list[str]:
    """Chat prompts (text) for questions, as the task's prompt settings build them."""
    return [prompt_text(tokenizer, q, task_cfg.prompt, task_cfg.answer_format) for q in questions]


def sample_keys(seed: int, names: list[str], n: int) -> list[list[int]]:
    """The random stream of each of ``n`` samples per name (a prompt's text, or RL's position in the step):
    ``keys[i][j] = prompt_seed(seed, names[i], j)``."""
    return [[prompt_seed(seed, name, j) for j in range(n)] for name in names]


def generate_judged(engine, prompt_ids: list[list[int]], problems: list[Problem], task_cfg,
                    params: SamplingParams, progress: bool = True, seconds: dict[str, float] | None = None,
                    keys: list[list[int]] | None = None) -> list[list[tuple[Sample, Verdict]]]:
    """``params.n`` samples per prompt, each judged once against its problem (all in one judge call, so
    program-of-thought programs run in parallel), grouped per prompt. ``seconds``, if given, gains the
    time spent in `generate` and `judge`; ``keys`` seed each sample (`sample_keys`), else the engine
    derives them from the prompts' ids."""
    if not prompt_ids:  # a rank whose share of a small call is empty
        return []
    t0 = time.perf_counter()
    outputs = engine.generate(prompt_ids, params, progress=progress, keys=keys)
    t1 = time.perf_counter()
    verdicts = iter(judge([s.text for group in outputs for s in group],
                          [p for p, group in zip(problems, outputs) for _ in group], task_cfg))
    if seconds is not None:
        seconds["generate"] = seconds.get("generate", 0.0) + t1 - t0
        seconds["judge"] = seconds.get("judge", 0.0) + time.perf_counter() - t1
    return [[(s, next(verdicts)) for s in group] for group in outputs]


@dataclasses.dataclass
class Judged:
    """One problem's samples and their verdicts."""

    problem: Problem
    texts: list[str]
    tokens: list[int]
    answers: list[str | None]
    correct: list[bool]


def sample_and_judge(engine, tokenizer, problems: list[Problem], task_cfg, params: SamplingParams,
                     progress: bool = True, prompts: list[str] | None = None) -> list[Judged]:
    """Generate ``params.n`` completions per problem (from ``prompts`` if given, else the problems' own
    questions) and judge each once against the gold answer; sample j of a prompt is seeded by
    (``params.seed``, prompt text, j).

    Under torchrun every rank must call this with the same problems: rank r samples problems r, r + N,
    ... (strided, so a list sorted by length or difficulty spreads evenly) and every rank returns all of
    them, in order."""
    prompts = prompts or prompts_for(tokenizer, [p.question for p in problems], task_cfg)
    rank, world = dist.rank(), dist.world_size()
    mine_p, mine_t = problems[rank::world], prompts[rank::world]
    groups = generate_judged(engine, [encode_prompt(tokenizer, t) for t in mine_t], mine_p, task_cfg, params,
                             progress and dist.is_main(), keys=sample_keys(params.seed, mine_t, params.n))
    judged = [Judged(problem=p, texts=[s.text for s, _ in g], tokens=[len(s.token_ids) for s, _ in g],
                     answers=[v.answer for _, v in g], correct=[v.correct for _, v in g])
              for p, g in zip(mine_p, groups)]
    return dist.gather_strided(judged)
