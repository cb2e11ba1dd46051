"""`run.ablation`: arms of an ablation compared with the first arm on the same held-out problems.

Each arm is an eval stage. Every arm after the first is paired with the first, problem by problem: the
exact McNemar p-value and Newcombe interval of `metrics.paired_comparison`, and the change in response
length (tokens of the greedy answer). With several arms the p-values are Holm-adjusted: each arm is one
test against the same baseline, and "some arm differs" should not come out of chance more often than 5%
of the time because there were many arms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reasonloop.metrics import mean_interval, paired_comparison
from reasonloop.runs.compare import SIGNIFICANCE

__all__ = ["holm", "compare_arms", "ablation_from_store", "ablation_verdict", "ablation_lines"]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure"), in the input's order: sorted ascending, the j-th smallest (0-based) becomes
    max over i <= j of min(1, (m - i) p_(i)). Rejecting where the adjusted p < alpha keeps the family-wise
    error rate at alpha for any dependence between the tests."""
    bad = [p for p in p_values if not 0.0 <= p <= 1.0]  # also NaN
    if bad:
        raise ValueError(f"p-values must lie in [0, 1], got {bad[0]!r}")
    m = len(p_values)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def _tokens_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict:
    """Mean paired change in greedy response length, with its t-interval over problems."""
    common = [pid for pid in after if pid in before]
    if not common:
        return {}
    delta, ci = mean_interval([after[p] - before[p] for p in common])
    return {"tokens_delta": delta, "tokens_delta_ci95": list(ci)}


def compare_arms(arms: Sequence[str], correct: Mapping[str, Mapping[str, bool]],
                 tokens: Mapping[str, Mapping[str, float]]) -> dict[str, dict]:
    """Each arm after the first against the first: `{arm: {vs, n, delta, delta_ci95, p_value, p_holm, wins,
    losses, tokens_delta, tokens_delta_ci95}}`. ``correct[arm]``: greedy correctness by problem id;
    ``tokens[arm]``: greedy answer length by problem id (may be empty: no length delta then). Arms that
    share no problem with the first get `{vs, skipped}` and no test (they do not count in Holm's m)."""
    if len(arms) < 2:
        raise ValueError(f"an ablation needs at least two arms, got {list(arms)}")
    first, out = arms[0], {}
    for arm in arms[1:]:
        paired = paired_comparison(correct[first], correct[arm])
        if paired is None:
            out[arm] = {"vs": first, "skipped": f"no problem in common with {first!r}"}
            continue
        out[arm] = {"vs": first, **paired, **_tokens_delta(tokens.get(first, {}), tokens.get(arm, {}))}
    tested = [a for a in out if "p_value" in out[a]]
    for arm, p in zip(tested, holm([out[a]["p_value"] for a in tested])):
        out[arm]["p_holm"] = p
    return out


def ablation_from_store(store, arms: Sequence[str], briefs: Mapping[str, dict]) -> dict[str, dict] | None:
    """summary.json's `ablation`: for each arm that has run (in `run.ablation`'s order), its top-1, interval,
    problems and mean tokens, and for the arms after the first `vs_first` (`compare_arms`). None when no
    arm has run; only the arms that ran are compared (a run in progress)."""
    done = [a for a in arms if a in briefs]
    if not done:
        return None
    out = {a: {k: briefs[a].get(k) for k in ("top1", "top1_ci95", "n", "mean_tokens")} for a in done}
    if len(done) >= 2 and done[0] == arms[0]:
        correct = {a: {pid: v > 0.5 for pid, v in store.problem_stats("greedy_correct", a).items()} for a in done}
        tokens = {a: store.problem_stats("greedy_tokens", a) for a in done}
        for arm, cmp in compare_arms(done, correct, tokens).items():
            out[arm]["vs_first"] = cmp
    return out


def ablation_verdict(cmp: dict) -> str:
    """'better' | 'worse' | 'no clear difference' than the first arm, read from the Holm-adjusted p-value."""
    if cmp.get("p_holm") is None or cmp["p_holm"] >= SIGNIFICANCE:
        return "no clear difference"
    return "better" if cmp["wins"] > cmp["losses"] else "worse"


def ablation_lines(ablation: Mapping[str, dict]) -> list[str]:
    """The ablation as a plain-text table (the command line prints it after a run)."""
    arms = list(ablation)
    width = max(8, *(len(a) + 2 for a in arms))
    lines = [f"{'arm':<{width}}{'top-1 [95% CI]':<24}{'vs ' + arms[0] + ' [95% CI]':<28}{'won/lost':<10}"
             f"{'p':<9}{'p (Holm)':<10}{'verdict':<21}{'tokens':<8}{'Δ tokens':<10}"]
    for arm, row in ablation.items():
        top1 = f"{row['top1']:.3f} [{row['top1_ci95'][0]:.3f}, {row['top1_ci95'][1]:.3f}]"
        cmp = row.get("vs_first") or {}
        if "p_value" in cmp:
            lo, hi = cmp["delta_ci95"]
            cells = (f"{cmp['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{cmp['wins']}/{cmp['losses']}",
                     f"{cmp['p_value']:.2g}", f"{cmp['p_holm']:.2g}", ablation_verdict(cmp))
        else:
            cells = ("(baseline)" if arm == arms[0] else cmp.get("skipped", "-"), "-", "-", "-", "")
        tokens = f"{row['mean_tokens']:.1f}" if row.get("mean_tokens") is not None else "-"
        dtok = f"{cmp['tokens_delta']:+.1f}" if cmp.get("tokens_delta") is not None else "-"
        lines.append(f"{arm:<{width}}{top1:<24}{cells[0]:<28}{cells[1]:<10}{cells[2]:<9}{cells[3]:<10}"
                     f"{cells[4]:<21}{tokens:<8}{dtok:<10}")
    return lines
