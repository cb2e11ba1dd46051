"""`reasonloop compare RUN_A RUN_B`: is B better than A? One eval of each run, paired problem by problem.

Two evals of the same problems are paired data, so the question is answered by the problems whose outcome
changed (McNemar's test, Newcombe's interval of the paired difference; `reasonloop.metrics`), not by two
overlapping intervals. Evals of different problems cannot be paired, and are refused.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from reasonloop.atomic import write_text_atomic
from reasonloop.errors import UserError
from reasonloop.metrics import paired_comparison, wilson_interval
from reasonloop.runs.compare import SIGNIFICANCE, delta_text, verdict
from reasonloop.runs.store import RunStore


@dataclass
class EvalRecord:
    """One finished eval of one run: greedy correctness, gold answer and greedy response tokens per problem."""

    run: str
    stage: str
    correct: dict[str, bool]
    gold: dict[str, str]
    tokens: dict[str, float]
    pass_rate: dict[str, float]  # sampled accuracy per problem; empty when the eval did not sample

    @property
    def label(self) -> str:
        return f"{self.run} (eval {self.stage!r})"


def _eval_stage(store: RunStore, run: str, stage: str | None) -> str:
    """The eval to compare: `stage` when given, else the run's last finished eval."""
    evals = [s for s in store.stages() if s["kind"] == "eval" and s["status"] == "done"]
    if stage is None:
        if not evals:
            raise UserError(f"{run}: no finished eval stage to compare")
        return evals[-1]["name"]
    found = store.stage(stage)
    if found is None:
        names = ", ".join(s["name"] for s in evals) or "none"
        raise UserError(f"{run}: no stage {stage!r} (finished evals: {names})")
    if found["kind"] != "eval" or found["status"] != "done":
        raise UserError(f"{run}: stage {stage!r} is a {found['status']} {found['kind']} stage, not a finished eval")
    return stage


def read_eval(run_dir: str | Path, stage: str | None = None) -> EvalRecord:
    """Read one eval of a run folder (read-only: a run in progress is not disturbed)."""
    run = str(run_dir)
    path = Path(run_dir) / "store.sqlite"
    if not path.is_file():
        raise UserError(f"{run}: not a run folder (no store.sqlite)")
    store = RunStore(path, readonly=True)
    try:
        name = _eval_stage(store, run, stage)
        correct = {pid: v > 0.5 for pid, v in store.problem_stats("greedy_correct", name).items()}
        if not correct:
            raise UserError(f"{run}: eval {name!r} stored no per-problem results")
        greedy = [r for r in store.samples(name) if '"greedy"' in (r["meta"] or "")]
        return EvalRecord(run, name, correct, {r["problem_id"]: r["gold"] for r in greedy},
                          {r["problem_id"]: float(r["tokens"]) for r in greedy if r["tokens"] is not None},
                          store.problem_stats("pass_rate", name))
    finally:
        store.close()


def check_same_problems(a: EvalRecord, b: EvalRecord) -> None:
    """Refuse, in one line, two evals that did not see the same problems with the same gold answers."""
    only_a, only_b = sorted(set(a.correct) - set(b.correct)), sorted(set(b.correct) - set(a.correct))
    if only_a or only_b:
        example = (only_a or only_b)[0]
        raise UserError(f"{a.label} and {b.label} did not see the same problems ({len(a.correct)} and "
                        f"{len(b.correct)}; {len(only_a)} only in A, {len(only_b)} only in B, e.g. {example!r}): "
                        "a paired comparison needs evals of the same problems")
    differ = sorted(p for p in a.gold if p in b.gold and a.gold[p] != b.gold[p])
    if differ:
        raise UserError(f"{a.label} and {b.label} have different gold answers for {len(differ)} problems "
                        f"(e.g. {differ[0]!r}: {a.gold[differ[0]]!r} vs {b.gold[differ[0]]!r}): not the same problems")


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def compare_evals(a: EvalRecord, b: EvalRecord) -> dict:
    """Both accuracies with their intervals, the paired change B - A (delta, interval, McNemar p, wins:
    right in B and wrong in A, losses: the reverse), and mean greedy response tokens."""
    check_same_problems(a, b)
    paired = paired_comparison(a.correct, b.correct)
    n = paired["n"]
    out = {"n": n, "a": a.label, "b": b.label, "paired": paired, "verdict": verdict(paired)}
    for side, rec in (("a", a), ("b", b)):
        hits = sum(rec.correct.values())
        out[f"top1_{side}"] = hits / n
        out[f"top1_ci95_{side}"] = list(wilson_interval(hits, n))
        out[f"mean_tokens_{side}"] = _mean(rec.tokens.values())
        out[f"sampled_{side}"] = _mean(rec.pass_rate.values())
    return out


READING = {"raises": "B is better", "lowers": "B is worse", "no clear change": "no clear change"}


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(cmp: dict) -> list[tuple[str, str, str]]:
    """(measure, A, B) rows, shared by the terminal table and the HTML page."""
    top = [f"{cmp[f'top1_{s}']:.3f} [{cmp[f'top1_ci95_{s}'][0]:.3f}, {cmp[f'top1_ci95_{s}'][1]:.3f}]" for s in "ab"]
    rows = [("greedy top-1 [95% CI]", *top),
            ("mean response tokens", _num(cmp["mean_tokens_a"], ".1f"), _num(cmp["mean_tokens_b"], ".1f"))]
    if cmp["sampled_a"] is not None or cmp["sampled_b"] is not None:
        rows.append(("sampled accuracy", _num(cmp["sampled_a"], ".3f"), _num(cmp["sampled_b"], ".3f")))
    return rows


def summary_lines(cmp: dict) -> list[str]:
    """The paired result, in words."""
    p = cmp["paired"]
    return [f"paired change B - A on {cmp['n']} problems: {delta_text(p)}, McNemar p = {p['p_value']:.3g} "
            f"({READING[cmp['verdict']]} at p < {SIGNIFICANCE})",
            f"wins / losses: {p['wins']} / {p['losses']} (B right where A was wrong / the reverse)"]


def format_table(cmp: dict) -> str:
    rows = [("", "A", "B"), *table_rows(cmp)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"A: {cmp['a']}", f"B: {cmp['b']}"]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines + summary_lines(cmp))


OUTCOMES = (("both right", "#59a14f"), ("win (B only)", "#4c78a8"), ("loss (A only)", "#e15759"),
            ("both wrong", "#9c9c9c"))


def outcome(right_a: bool, right_b: bool) -> str:
    return OUTCOMES[0 if right_a and right_b else 1 if right_b else 2 if right_a else 3][0]


def scatter_plot(a: EvalRecord, b: EvalRecord) -> str | None:
    """Per problem: response tokens in A against B, coloured by the paired outcome; beside it, when both
    evals sampled, the per-problem sampled accuracy in A against B. An embedded PNG <img>, or None."""
    from reasonloop.runs.report_plots import plt, png as _png

    ids = [p for p in a.correct if p in a.tokens and p in b.tokens]
    sampled = [p for p in a.correct if p in a.pass_rate and p in b.pass_rate]
    panels = [(ids, a.tokens, b.tokens, "response tokens")] if ids else []
    if sampled:
        panels.append((sampled, a.pass_rate, b.pass_rate, "sampled accuracy"))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (pids, xa, xb, what) in zip(axes.flat, panels):
        for name, colour in OUTCOMES:
            mine = [p for p in pids if outcome(a.correct[p], b.correct[p]) == name]
            if mine:
                ax.scatter([xa[p] for p in mine], [xb[p] for p in mine], s=18, alpha=0.7, color=colour,
                           label=f"{name} ({len(mine)})")
        top = max(max(xa[p] for p in pids), max(xb[p] for p in pids), 1e-9) * 1.05
        ax.plot([0, top], [0, top], color="#bbb", lw=1, zorder=0)  # y = x: no change
        ax.set_xlabel(f"A: {what}")
        ax.set_ylabel(f"B: {what}")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)


def write_html(cmp: dict, a: EvalRecord, b: EvalRecord, out: str | Path) -> Path:
    """A self-contained page: the table, the paired result and the per-problem scatter."""
    from reasonloop.runs.report import CSS

    cell = lambda text, tag="td": f"<{tag}>{html.escape(str(text))}</{tag}>"  # noqa: E731
    rows = "".join("<tr>" + cell(m, "th") + cell(x) + cell(y) + "</tr>" for m, x, y in table_rows(cmp))
    body = [f"<h1>reasonloop compare</h1><p>A: {html.escape(cmp['a'])}<br>B: {html.escape(cmp['b'])}</p>",
            f"<table><tr><th></th><th>A</th><th>B</th></tr>{rows}</table>",
            "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(cmp))]
    plot = scatter_plot(a, b)
    if plot:
        body.append(f"<h2>Per problem</h2>{plot}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>reasonloop compare</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    return write_text_atomic(Path(out), page)
