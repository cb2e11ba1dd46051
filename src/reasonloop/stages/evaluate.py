"""The evaluation stage: greedy top-1, maj@k, unbiased pass@k and response length, over seeds.

Decoding settings are stored with every number; every sample goes to the run store.
"""

from __future__ import annotations

import dataclasses
import logging

from reasonloop.generate import make_engine
from reasonloop.generate.base import SamplingParams
from reasonloop.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval
from reasonloop.tasks.base import Problem
from reasonloop.tasks.prompt import encode_prompt, prompt_text
from reasonloop.verify.equiv import answers_match
from reasonloop.verify.extract import extract_answer
from reasonloop.verify.rewards import is_correct

log = logging.getLogger(__name__)


def vote_key(answer: str | None):
    """Answers that are the same number vote together (`72`, `72.0`, `72.00`)."""
    if answer is None:
        return None
    try:
        return round(float(answer.replace(",", "")), 6)
    except ValueError:
        return answer.strip().lower()


@dataclasses.dataclass
class Judged:
    problem: Problem
    texts: list[str]
    tokens: list[int]
    answers: list[str | None]
    correct: list[bool]


def sample_and_judge(engine, tokenizer, problems: list[Problem], task_cfg, params: SamplingParams,
                     progress: bool = True, prompts: list[str] | None = None) -> list[Judged]:
    """Generate `params.n` completions per problem and check each against the gold answer."""
    prompts = prompts or [prompt_text(tokenizer, p.question, task_cfg.prompt, task_cfg.answer_format)
                          for p in problems]
    outputs = engine.generate([encode_prompt(tokenizer, t) for t in prompts], params, progress=progress)
    judged = []
    program_answers = _program_answers(problems, outputs) if task_cfg.answer_format == "program" else None
    for i, (problem, samples) in enumerate(zip(problems, outputs)):
        texts = [s.text for s in samples]
        if program_answers is not None:  # program-of-thought: the answer is what the program prints
            answers = program_answers[i]
            correct = [answers_match(a, problem.answer, task_cfg.numeric_tolerance) for a in answers]
        else:
            answers = [extract_answer(t, task_cfg.extract) for t in texts]
            correct = [is_correct(t, problem, task_cfg.extract, task_cfg.numeric_tolerance) for t in texts]
        judged.append(Judged(problem=problem, texts=texts, tokens=[len(s.token_ids) for s in samples],
                             answers=answers, correct=correct))
    return judged


def _program_answers(problems, outputs) -> list[list[str | None]]:
    """Run every sampled program in the sandbox at once (in parallel), grouped back per problem."""
    from reasonloop.verify.pot import pot_answers

    flat = pot_answers([s.text for samples in outputs for s in samples])
    out, i = [], 0
    for samples in outputs:
        out.append(flat[i:i + len(samples)])
        i += len(samples)
    return out


def _store_rows(judged: list[Judged], prompts: list[str], tag: str) -> list[dict]:
    rows = []
    for j, prompt in zip(judged, prompts):
        for text, ans, ok, n_tok in zip(j.texts, j.answers, j.correct, j.tokens):
            rows.append({"problem_id": j.problem.id, "prompt": prompt, "completion": text, "answer": ans,
                         "gold": j.problem.answer, "reward": float(ok), "correct": ok, "tokens": n_tok,
                         "meta": {"decoding": tag}})
    return rows


def evaluate(model, tokenizer, problems: list[Problem], task_cfg, cfg, store=None, stage: str = "eval",
             engine=None, progress: bool = True, step: int = 0) -> dict:
    """Evaluate `model` on `problems` with an EvalStage config; return the summary dict."""
    if cfg.k and (cfg.n or cfg.k) < cfg.k:
        from reasonloop.errors import UserError

        raise UserError(f"eval: k={cfg.k} is larger than the samples drawn per problem n={cfg.n}; "
                        "pass@k needs n >= k")
    problems = problems[: cfg.limit] if cfg.limit else problems
    if not problems:
        from reasonloop.errors import UserError

        raise UserError(f"{stage}: no problems to evaluate")
    engine = engine or make_engine(model, tokenizer, max_batch=cfg.batch_size, progress=progress)
    prompts = [prompt_text(tokenizer, p.question, task_cfg.prompt, task_cfg.answer_format) for p in problems]
    dec = cfg.decoding
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=dec.max_new_tokens, stop=tuple(dec.stop))
    judged = sample_and_judge(engine, tokenizer, problems, task_cfg, greedy, progress, prompts)
    hits = sum(j.correct[0] for j in judged)
    result = {"top1": hits / len(judged), "top1_ci95": list(wilson_interval(hits, len(judged))),
              "n": len(judged), "mean_tokens": sum(j.tokens[0] for j in judged) / len(judged),
              "decoding": {"top1": "greedy", "max_new_tokens": dec.max_new_tokens}}
    if store is not None:
        store.add_samples(stage, step, _store_rows(judged, prompts, "greedy"))
        store.set_problem_stats(stage, "greedy_correct", {j.problem.id: float(j.correct[0]) for j in judged})
    if cfg.k:
        result.update(_sampled_metrics(engine, tokenizer, problems, prompts, task_cfg, cfg, store, stage,
                                       progress, step))
    return result


def _sampled_metrics(engine, tokenizer, problems, prompts, task_cfg, cfg, store, stage, progress,
                     step) -> dict:
    n, k, dec = cfg.n or cfg.k, cfg.k, cfg.decoding
    maj, pas, pass_rates = [], [], {p.id: [] for p in problems}
    for seed in range(cfg.seeds):
        params = SamplingParams(n=n, temperature=dec.temperature, top_p=dec.top_p, top_k=dec.top_k,
                                min_p=dec.min_p, max_new_tokens=dec.max_new_tokens, stop=tuple(dec.stop),
                                seed=seed)
        judged = sample_and_judge(engine, tokenizer, problems, task_cfg, params, progress, prompts)
        maj_hits = 0
        for j in judged:
            winner = majority_vote([vote_key(a) for a in j.answers[:k]])
            maj_hits += any(ok and vote_key(a) == winner for a, ok in zip(j.answers[:k], j.correct[:k])) \
                if winner is not None else 0
            pass_rates[j.problem.id].append(sum(j.correct) / n)
        maj.append(maj_hits / len(judged))
        pas.append(sum(pass_at_k(n, sum(j.correct), k) for j in judged) / len(judged))
        if store is not None:
            store.add_samples(stage, step, _store_rows(judged, prompts, f"seed{seed}"))
    if store is not None:
        store.set_problem_stats(stage, "pass_rate", {pid: sum(v) / len(v) for pid, v in pass_rates.items()})
    maj_mean, maj_ci = mean_interval(maj, bounds=(0.0, 1.0))
    pass_mean, pass_ci = mean_interval(pas, bounds=(0.0, 1.0))
    return {"k": k, "samples_per_problem": n, "seeds": cfg.seeds,
            "maj_k": maj_mean, "maj_k_ci95": list(maj_ci), "maj_k_per_seed": maj,
            "pass_k": pass_mean, "pass_k_ci95": list(pass_ci), "pass_k_per_seed": pas,
            "sampling": {"temperature": dec.temperature, "top_p": dec.top_p, "top_k": dec.top_k,
                         "min_p": dec.min_p, "max_new_tokens": dec.max_new_tokens}}


def run(ctx, cfg, name: str) -> dict:
    """Pipeline entry: evaluate the current model (or `init_from`) on the task's held-out problems."""
    from reasonloop.models import load_model

    model_ref = ctx.resolve_model(cfg.init_from)
    model, tokenizer = load_model(model_ref, dtype=ctx.recipe.model.dtype)
    engine = make_engine(model, tokenizer, kind=ctx.recipe.run.engine, max_batch=cfg.batch_size,
                         progress=ctx.progress)
    result = evaluate(model, tokenizer, ctx.task.test, ctx.recipe.task, cfg, ctx.store, name, engine,
                      ctx.progress)
    result["evaluated_model"] = str(model_ref)
    log.info("%s: top-1 %.3f [%.3f, %.3f] on %d problems", name, result["top1"], *result["top1_ci95"],
             result["n"])
    return result
