"""Each evaluation of a run against the evaluation before it, problem by problem, from the run store.

Two evaluations on the same problems are paired data: whether a stage changed accuracy is a question about
the problems whose outcome changed (McNemar), not about two independent proportions, whose intervals
overlap long after a paired test has seen a real change.
"""

from __future__ import annotations

from reasonloop.metrics import mean_interval, paired_comparison


def previous_eval(recipe, name: str) -> str | None:
    """The eval stage `name` is paired against: its `compare_to`, else the last eval stage before it in
    the recipe (None for the first)."""
    names = recipe.stage_names()
    chosen = getattr(recipe.stages[names.index(name)], "compare_to", None)
    if chosen is not None:
        return chosen
    earlier = [n for n, stage in zip(names[: names.index(name)], recipe.stages) if stage.kind == "eval"]
    return earlier[-1] if earlier else None


def paired_with_previous(store, recipe, name: str) -> dict:
    """Fields for eval `name`'s result: `paired` (against the previous eval, on the problems both saw), or
    `paired_skipped` with the reason; nothing for the first eval of a run.

    Greedy correctness per problem comes from the `greedy_correct` problem stats that every eval stores,
    sampled accuracy per problem from `pass_rate` (evals with k > 0).
    """
    prev = previous_eval(recipe, name)
    if prev is None:
        return {}
    before = {pid: v > 0.5 for pid, v in store.problem_stats("greedy_correct", prev).items()}
    after = {pid: v > 0.5 for pid, v in store.problem_stats("greedy_correct", name).items()}
    paired = paired_comparison(before, after)
    if paired is None:
        return {"paired_skipped": f"no problem in common with eval {prev!r} ({len(after)} problems here, "
                                  f"{len(before)} there): nothing to pair"}
    paired = {"vs": prev, **paired}
    if paired["n"] < max(len(before), len(after)):
        paired["note"] = (f"paired on the {paired['n']} problems both evaluated ({len(after)} here, "
                          f"{len(before)} in {prev!r})")
    rates_before = store.problem_stats("pass_rate", prev)
    rates_after = store.problem_stats("pass_rate", name)
    common = [pid for pid in rates_after if pid in rates_before]
    if common:  # both sampled: the paired difference in sampled accuracy, with its t-interval over problems
        delta, ci = mean_interval([rates_after[p] - rates_before[p] for p in common], bounds=(-1.0, 1.0))
        paired.update(sampled_n=len(common), sampled_delta=delta, sampled_delta_ci95=list(ci))
    return {"paired": paired}


SIGNIFICANCE = 0.05  # a stage raises (lowers) accuracy when the McNemar p-value is below this


def verdict(paired: dict) -> str:
    """'raises' | 'lowers' | 'no clear change': the paired test's reading, as the report and table show it."""
    if paired["p_value"] >= SIGNIFICANCE:
        return "no clear change"
    return "raises" if paired["wins"] > paired["losses"] else "lowers"


def delta_text(paired: dict) -> str:
    """'+0.098 [+0.057, +0.139]': the paired change in top-1 with its interval."""
    lo, hi = paired["delta_ci95"]
    return f"{paired['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
