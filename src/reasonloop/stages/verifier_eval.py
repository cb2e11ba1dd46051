"""rerank@k and weighted maj@k: an eval stage that names a `verifier` scores the same k samples maj@k votes
over (no extra sampling) and reports both, with intervals and paired against top-1 and maj@k.

rerank@k (Cobbe et al. 2021): is the sample the verifier scores highest right? weighted maj@k: is the answer
whose samples' verifier probabilities sum highest right? (Li et al. 2023; ReFT reports voting and reranking.)
"""

from __future__ import annotations

from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.metrics import mean_interval, paired_comparison, rerank_pick, sigmoid, weighted_vote, wilson_interval
from reasonloop.verify.judge import canonical_answer


def rerank_is_correct(scores: list[float], correct: list[bool]) -> bool:
    """rerank@k for one problem: is the highest-scored sample right (a tie: the earliest of them)?"""
    return bool(correct[rerank_pick(scores)])


def weighted_majority_is_correct(answers: list[str | None], correct: list[bool], weights: list[float]) -> bool:
    """weighted maj@k for one problem: votes group by `canonical_answer` as maj@k's do, each weighted by
    the verifier's P(correct); is the winning answer right?"""
    if not (len(answers) == len(correct) == len(weights)):
        raise ValueError(f"{len(answers)} answers, {len(correct)} verdicts and {len(weights)} weights")
    winner = weighted_vote([canonical_answer(a) for a in answers], weights)
    return winner is not None and any(ok and canonical_answer(a) == winner for a, ok in zip(answers, correct))


def resolve_verifier(ctx, ref: str) -> Path:
    """A verifier stage's saved folder (by stage name: it must have run before this stage) or a folder path."""
    from reasonloop.pipeline import stage_output
    from reasonloop.verifier_model import check_verifier_folder

    if ref in ctx.recipe.stage_names():
        row = ctx.store.stage(ref)
        saved = ((row or {}).get("result") or {}).get("verifier")
        if row is None or row["status"] != "done" or not saved:
            raise UserError(f"verifier: stage {ref!r} has not saved a verifier (it must be a verifier stage that "
                            "runs before this one)")
        return check_verifier_folder(stage_output(ctx.run_dir, saved))
    return check_verifier_folder(ref)


def resolve_verifier_reward(ctx, reward: str) -> str:
    """An RL reward name with `verifier:<stage name>` turned into `verifier:<its folder>`; others unchanged."""
    ref = reward[len("verifier:"):] if reward.startswith("verifier:") else None
    if ref is None or ref not in ctx.recipe.stage_names():
        return reward
    return f"verifier:{resolve_verifier(ctx, ref)}"


def score_seed(scorer, judged, prompts: list[str], k: int) -> tuple[dict, dict, list[list[float]]]:
    """Score each problem's first k samples: (rerank right by problem, weighted vote right by problem,
    logits per problem)."""
    flat_prompts = [p for j, p in zip(judged, prompts) for _ in j.texts[:k]]
    flat = iter(scorer(flat_prompts, [t for j in judged for t in j.texts[:k]]))
    logits = [[next(flat) for _ in j.texts[:k]] for j in judged]
    rerank = {j.problem.id: rerank_is_correct(s, j.correct[:k]) for j, s in zip(judged, logits)}
    weighted = {j.problem.id: weighted_majority_is_correct(j.answers[:k], j.correct[:k], [sigmoid(x) for x in s])
                for j, s in zip(judged, logits)}
    return rerank, weighted, logits


def _rate(per_seed: list[dict[str, bool]]) -> tuple[float, list[float], list[float]]:
    """Mean over seeds and its 95% interval: Wilson over problems for one seed, t over seeds for several."""
    rates = [sum(d.values()) / len(d) for d in per_seed]
    if len(per_seed) == 1:
        return rates[0], list(wilson_interval(sum(per_seed[0].values()), len(per_seed[0]))), rates
    mean, ci = mean_interval(rates, bounds=(0.0, 1.0))
    return mean, list(ci), rates


def verifier_summary(rerank: list[dict[str, bool]], weighted: list[dict[str, bool]], maj: dict[str, bool],
                     top1: dict[str, bool]) -> dict:
    """rerank@k and weighted maj@k over seeds, and the first seed's problems paired with greedy top-1 and with
    maj@k of the same samples (exact McNemar p, Newcombe interval of the difference)."""
    out = {}
    for key, per_seed in (("rerank_k", rerank), ("weighted_maj_k", weighted)):
        mean, ci, rates = _rate(per_seed)
        out.update({key: mean, f"{key}_ci95": ci, f"{key}_per_seed": rates})
    out["verifier_paired"] = {
        f"{key}_vs_{base}": paired_comparison(before, per_seed[0])
        for key, per_seed in (("rerank", rerank), ("weighted", weighted))
        for base, before in (("top1", top1), ("maj", maj))}
    return out
