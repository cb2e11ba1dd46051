"""The evaluation stage: greedy top-1, maj@k, unbiased pass@k, sampled accuracy and response length, over
seeds; each eval after the first is paired, problem by problem, with the eval before it (runs/compare.py).

Decoding settings are stored with every number; every sample goes to the run store. Under torchrun each
rank samples its share of the problems and every rank computes the metrics from all of them
(`rollout.sample_and_judge`), equal to one process's.
"""

from __future__ import annotations

import logging

import torch

from reasonloop.generate import make_engine
from reasonloop.parallel import generation_model
from reasonloop.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval
from reasonloop.stages.rollout import Judged, prompts_for, sample_and_judge, sampling_params
from reasonloop.runs.compare import paired_with_previous
from reasonloop.tasks.base import Problem
from reasonloop.verify.judge import canonical_answer

log = logging.getLogger(__name__)


def majority_is_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """maj@k for one problem: is the most voted answer right? Votes group by `canonical_answer`, the
    value correctness reads (``18``, ``18 dollars`` and ``$18`` are one vote); no answer casts no vote."""
    winner = majority_vote([canonical_answer(a) for a in answers])
    return winner is not None and any(ok and canonical_answer(a) == winner for a, ok in zip(answers, correct))


def _store_rows(judged: list[Judged], prompts: list[str], tag: str, scores: list[list[float]] | None = None
                ) -> list[dict]:
    rows = []
    for i, (j, prompt) in enumerate(zip(judged, prompts)):
        for m, (text, ans, ok, n_tok) in enumerate(zip(j.texts, j.answers, j.correct, j.tokens)):
            meta = {"decoding": tag}
            if scores is not None and m < len(scores[i]):
                meta["verifier_score"] = scores[i][m]  # the report plots it against correctness
            rows.append({"problem_id": j.problem.id, "prompt": prompt, "completion": text, "answer": ans,
                         "gold": j.problem.answer, "reward": float(ok), "correct": ok, "tokens": n_tok,
                         "meta": meta})
    return rows


def evaluate(model, tokenizer, problems: list[Problem], task_cfg, cfg, store=None, stage: str = "eval",
             engine=None, progress: bool = True, step: int = 0, scorer=None) -> dict:
    """Evaluate `model` on `problems` with an EvalStage config; return the summary dict. `scorer`
    (prompts, responses) -> verifier logits adds rerank@k and weighted maj@k (stages/verifier_eval.py)."""
    problems = problems[: cfg.limit] if cfg.limit else problems
    if not problems:
        from reasonloop.errors import UserError

        raise UserError(f"{stage}: no problems to evaluate")
    engine = engine or make_engine(model, tokenizer, max_batch=cfg.batch_size, progress=progress)
    prompts = prompts_for(tokenizer, [p.question for p in problems], task_cfg)
    dec = cfg.decoding
    judged = sample_and_judge(engine, tokenizer, problems, task_cfg, sampling_params(dec, 1, greedy=True), progress,
                              prompts)
    hits = sum(j.correct[0] for j in judged)
    result = {"top1": hits / len(judged), "top1_ci95": list(wilson_interval(hits, len(judged))),
              "n": len(judged), "mean_tokens": sum(j.tokens[0] for j in judged) / len(judged),
              "decoding": {"top1": "greedy", "max_new_tokens": dec.max_new_tokens}}
    if store is not None:
        store.add_samples(stage, step, _store_rows(judged, prompts, "greedy"))
        store.set_problem_stats(stage, "greedy_correct", {j.problem.id: float(j.correct[0]) for j in judged})
        store.set_problem_stats(stage, "greedy_tokens", {j.problem.id: float(j.tokens[0]) for j in judged})
    if cfg.k:
        top1 = {j.problem.id: j.correct[0] for j in judged}
        result.update(_sampled_metrics(engine, tokenizer, problems, prompts, task_cfg, cfg, store, stage,
                                       progress, step, scorer, top1))
    return result


def _sampled_metrics(engine, tokenizer, problems, prompts, task_cfg, cfg, store, stage, progress,
                     step, scorer=None, top1=None) -> dict:
    from reasonloop.stages.verifier_eval import score_seed, verifier_summary

    n, k, dec = cfg.n or cfg.k, cfg.k, cfg.decoding
    maj, pas, pass_rates = [], [], {p.id: [] for p in problems}
    maj_first, reranked, weighted = {}, [], []  # per-problem outcomes for the verifier's paired comparisons
    for seed in range(cfg.seeds):
        params = sampling_params(dec, n, seed)
        judged = sample_and_judge(engine, tokenizer, problems, task_cfg, params, progress, prompts)
        maj_hits, scores = 0, None
        for j in judged:
            maj_ok = majority_is_correct(j.answers[:k], j.correct[:k])
            maj_hits += maj_ok
            if seed == 0:
                maj_first[j.problem.id] = maj_ok
            pass_rates[j.problem.id].append(sum(j.correct) / n)
        if scorer is not None:  # the same k samples maj@k voted over
            rerank_ok, weighted_ok, scores = score_seed(scorer, judged, prompts, k)
            reranked.append(rerank_ok)
            weighted.append(weighted_ok)
        maj.append(maj_hits / len(judged))
        pas.append(sum(pass_at_k(n, sum(j.correct), k) for j in judged) / len(judged))
        if store is not None:
            store.add_samples(stage, step, _store_rows(judged, prompts, f"seed{seed}", scores))
    rates = {pid: sum(v) / len(v) for pid, v in pass_rates.items()}  # share of all n x seeds samples right
    if store is not None:
        store.set_problem_stats(stage, "pass_rate", rates)
    maj_mean, maj_ci = mean_interval(maj, bounds=(0.0, 1.0))
    pass_mean, pass_ci = mean_interval(pas, bounds=(0.0, 1.0))
    # Sampled accuracy (pass@1 at the sampling temperature): the interval is over problems, the unit that
    # varies most; samples of one problem are not independent draws.
    sampled_mean, sampled_ci = mean_interval(list(rates.values()), bounds=(0.0, 1.0))
    verified = verifier_summary(reranked, weighted, maj_first, top1) if scorer is not None else {}
    return {**verified, "k": k, "samples_per_problem": n, "seeds": cfg.seeds,
            "sampled_acc": sampled_mean, "sampled_acc_ci95": list(sampled_ci),
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
                         dtype=ctx.recipe.model.dtype, progress=ctx.progress)
    scorer, verifier_path = _verifier_scorer(ctx, cfg)
    result = evaluate(model, tokenizer, ctx.task.test, ctx.recipe.task, cfg, ctx.store, name, engine,
                      ctx.progress, scorer=scorer)
    result["evaluated_model"] = str(model_ref)
    if verifier_path is not None:
        result["verifier"] = str(verifier_path)
        log.info("%s: rerank@%d %.3f, weighted maj@%d %.3f (maj@%d %.3f)", name, cfg.k, result["rerank_k"], cfg.k,
                 result["weighted_maj_k"], cfg.k, result["maj_k"])
    log.info("%s: top-1 %.3f [%.3f, %.3f] on %d problems", name, result["top1"], *result["top1_ci95"],
             result["n"])
    result.update(paired_with_previous(ctx.store, ctx.recipe, name))
    if "paired" in result:
        pr = result["paired"]
        log.info("%s vs %s: top-1 %+.3f [%.3f, %.3f] on %d problems, %d won, %d lost, McNemar p = %.3g", name,
                 pr["vs"], pr["delta"], *pr["delta_ci95"], pr["n"], pr["wins"], pr["losses"], pr["p_value"])
    return result


def _verifier_scorer(ctx, cfg):
    """(prompts, responses) -> verifier logits for the stage's `verifier`, and its folder; (None, None) without."""
    if cfg.verifier is None:
        return None, None
    from reasonloop.stages.verifier_eval import resolve_verifier
    from reasonloop.verifier_model import load_verifier, score_solutions

    path = resolve_verifier(ctx, cfg.verifier)
    verifier, vtok = load_verifier(path, dtype=ctx.recipe.model.dtype)
    return (lambda prompts, responses: score_solutions(verifier, vtok, prompts, responses)), path


def periodic_eval(ctx, model, tokenizer, cfg, engine=None):
    """A training stage's learning curve: greedy top-1 on the first ``cfg.eval_limit`` held-out problems
    (the same slice every time), as a function of the step; None when ``cfg.eval_every`` is 0. ``engine``:
    one that already serves the model's current weights (RL's rollout engine), else one is built per call."""
    if not cfg.eval_every:
        return None
    from reasonloop.config import EvalStage

    eval_cfg = EvalStage(kind="eval", limit=cfg.eval_limit, k=0, decoding=getattr(cfg, "decoding", None) or {})

    def run_eval(step: int) -> float:
        was_training = model.training
        model.eval()
        # Under FSDP the engine samples from a whole copy of the weights (every rank gathers them here).
        sampled = model if engine is not None else generation_model(model, ctx.recipe.model.dtype)
        used = engine or make_engine(sampled, tokenizer, kind=ctx.recipe.run.engine, max_batch=eval_cfg.batch_size,
                                     dtype=ctx.recipe.model.dtype, progress=False)
        with torch.no_grad():
            top1 = evaluate(sampled, tokenizer, ctx.task.test, ctx.recipe.task, eval_cfg, engine=used,
                            progress=False)["top1"]
        model.train(was_training)
        return top1

    return run_eval
