"""The report's plots, each a PNG embedded as a data URI (the page needs no network and no files beside it).

Read at a glance: points are marked when a curve has few of them (a 4-step RL stage is 4 dots, not a
line that looks like a trend), count axes have integer ticks, and bars carry their value as text (a bar
of height 0 is otherwise invisible).
"""

from __future__ import annotations

import base64
import json
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reasonloop.runs.store import RunStore  # noqa: E402

CURVE_KEYS = ("loss", "reward_mean", "accuracy", "flat_share", "kl", "entropy", "response_tokens", "lr",
              "tokens_per_s")
TIME_PREFIX = "time/"  # per-step seconds of each phase of an RL step (generate, judge, update, ...)
EVAL_CURVE_KEY = "eval_top1"  # held-out greedy top-1 every `eval_every` steps
MARKERS_UP_TO = 60  # points per curve up to which each point gets a marker
BARS_UP_TO = 60  # steps up to which the time breakdown is stacked bars (a stacked area beyond)
PHASE_COLORS = {"generate": "#4c78a8", "judge": "#f58518", "old_logprobs": "#54a24b", "ref_logprobs": "#b79a20",
                "update": "#e45756", "sync": "#72b7b2", "eval": "#9d755d"}


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _integer_steps(ax, steps: tuple[int, int] | None = None) -> None:
    """Whole steps on the x axis, over `steps` (first, last) when given; a single point gets a step either
    side (matplotlib would label 1.900 ... 2.100 around it)."""
    lo, hi = (steps[0] - 0.5, steps[1] + 0.5) if steps else ax.get_xlim()
    if hi - lo < 2:
        lo, hi = (lo + hi) / 2 - 1, (lo + hi) / 2 + 1
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step", fontsize=8)


def _line(ax, points: list[tuple[int, float]], **style) -> None:
    marker = "o" if len(points) <= MARKERS_UP_TO else None
    # unclipped: a point at 0 on an axis that starts at 0 stays visible on the spine
    ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2, marker=marker, ms=4, clip_on=False, **style)


def accuracy_plot(stages: list[dict]) -> str | None:
    rows = [s for s in stages if s["kind"] == "eval" and s.get("result") and "top1" in s["result"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(rows)), 3.2))
    tops = [r["result"]["top1"] for r in rows]
    lo = [t - r["result"]["top1_ci95"][0] for t, r in zip(tops, rows)]
    hi = [r["result"]["top1_ci95"][1] - t for t, r in zip(tops, rows)]
    ax.bar(range(len(rows)), tops, yerr=[lo, hi], capsize=5, color="#4c78a8", ecolor="#555")
    for x, top in enumerate(tops):
        ax.annotate(f"{top:.3f}", (x, top), xytext=(8, 3), textcoords="offset points", fontsize=9)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows])
    ax.set_ylabel("held-out top-1 (95% CI)")
    ax.set_ylim(0, max(0.05, max(t + h for t, h in zip(tops, hi)) * 1.15))
    return png(fig)


def curve_plots(store: RunStore, stage: str) -> list[str]:
    """The stage's learning curves in a grid, three to a row."""
    keys = store.metric_keys(stage)
    chosen = [k for k in keys if k in CURVE_KEYS or k.startswith("curriculum/")]
    if not chosen:
        return []
    cols = 3
    nrows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 2.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, chosen):
        _line(ax, store.metrics(stage, key))
        ax.set_title(key, fontsize=10)
        _integer_steps(ax)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    return [png(fig)]


def eval_curve_plot(store: RunStore, stage: str) -> str | None:
    """Held-out top-1 measured during the stage (`eval_top1`, every `eval_every` steps)."""
    points = store.metrics(stage, EVAL_CURVE_KEY)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    _line(ax, points, color="#4c78a8")
    top = max(p[1] for p in points)
    ax.set_ylim(0, max(0.05, top * 1.2))
    ax.set_ylabel("held-out top-1 (greedy)")
    ax.set_title("held-out top-1 during training", fontsize=10)
    ax.grid(alpha=0.3)
    trained = [step for key in store.metric_keys(stage) for step, _ in store.metrics(stage, key)]
    _integer_steps(ax, (min(trained), max(trained)))  # the whole stage: where in training each eval fell
    return png(fig)


def stacked_phases(series: dict[str, list[tuple[int, float]]]) -> tuple[list[int], dict[str, list[float]]]:
    """Steps, and each phase's seconds at every step (0 where a phase did not run at that step, e.g. `eval`
    runs every `eval_every` steps): the rows of a stacked chart."""
    steps = sorted({step for points in series.values() for step, _ in points})
    stacked = {}
    for phase, points in series.items():
        at = dict(points)
        stacked[phase] = [float(at.get(step, 0.0)) for step in steps]
    return steps, stacked


def time_plot(store: RunStore, stage: str) -> str | None:
    """Seconds per step, stacked by phase (`time/*` metrics), each phase's share of the total in the legend."""
    keys = [k for k in store.metric_keys(stage) if k.startswith(TIME_PREFIX)]
    if not keys:
        return None
    order = list(PHASE_COLORS)  # the order the phases run in a step, bottom to top; unknown ones last
    phases = sorted((k[len(TIME_PREFIX):] for k in keys), key=lambda p: (order.index(p) if p in order else 99, p))
    steps, stacked = stacked_phases({p: store.metrics(stage, TIME_PREFIX + p) for p in phases})
    total = sum(sum(v) for v in stacked.values()) or 1.0
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{phase} ({100 * sum(v) / total:.0f}%)" for phase, v in stacked.items()]
    colors = [PHASE_COLORS.get(phase, None) for phase in stacked]
    if len(steps) <= BARS_UP_TO:
        bottom = [0.0] * len(steps)
        for (phase, values), label, color in zip(stacked.items(), labels, colors):
            ax.bar(steps, values, bottom=bottom, label=label, color=color, width=0.8)
            bottom = [b + v for b, v in zip(bottom, values)]
    else:
        ax.stackplot(steps, *stacked.values(), labels=labels, colors=[c or "#bbb" for c in colors])
    ax.set_ylabel("seconds per step")
    ax.set_title(f"time per step by phase ({total:.1f} s in all)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, reverse=True)
    _integer_steps(ax)
    return png(fig)


def length_plot(store: RunStore, stages: list[dict]) -> str | None:
    data = []
    for s in stages:
        if s["kind"] != "eval":
            continue
        toks = [r["tokens"] for r in store.samples(s["name"]) if r["tokens"] is not None]
        if toks:
            data.append((s["name"], toks))
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(data)), 3))
    ax.boxplot([d[1] for d in data], showfliers=False)
    ax.set_xticks(range(1, len(data) + 1), [d[0] for d in data])
    ax.set_ylabel("response tokens")
    return png(fig)


def paths_plot(store: RunStore) -> str | None:
    """How many questions had 0, 1, 2, ... distinct correct solutions among RFT's samples: counts on both
    axes, so integer ticks on both."""
    values = [int(v) for v in store.problem_stats("distinct_paths").values()]
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    top = max(values)
    counts = [values.count(paths) for paths in range(top + 1)]
    ax.bar(range(top + 1), counts, width=0.8, color="#59a14f")
    shown = max(top, 3)  # at least 0..3 on the axis: one bar alone would read as a block
    ax.set_xticks(range(shown + 1))
    ax.set_xlim(-0.6, shown + 0.6)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("distinct correct paths per question (RFT)")
    ax.set_ylabel("questions")
    return png(fig)


def verifier_plot(store: RunStore, stages: list[dict]) -> str | None:
    """Verifier score against correctness: per stage whose samples carry a verifier score (a verifier stage's
    held-out samples, an eval's reranked ones), the share correct per bin of P(correct), beside the diagonal
    of a calibrated verifier; the legend gives the AUC."""
    from reasonloop.metrics import calibration_bins, roc_auc, sigmoid

    fig, ax, drawn = None, None, 0
    for s in stages:
        pairs = [(json.loads(r["meta"] or "{}").get("verifier_score"), bool(r["correct"]))
                 for r in store.samples(s["name"])]
        pairs = [(x, ok) for x, ok in pairs if x is not None]
        if not pairs:
            continue
        if fig is None:
            fig, ax = plt.subplots(figsize=(4.6, 3.6))
            ax.plot([0, 1], [0, 1], ls=":", color="#999")
        bins = calibration_bins([sigmoid(x) for x, _ in pairs], [ok for _, ok in pairs])
        auc = roc_auc([x for x, _ in pairs], [ok for _, ok in pairs])
        label = f"{s['name']} (n={len(pairs)}, AUC {'n/a' if auc is None else f'{auc:.2f}'})"
        ax.plot([b["mean_prob"] for b in bins], [b["correct"] for b in bins], marker="o", label=label)
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("verifier score: P(correct)")
    ax.set_ylabel("share of samples correct")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return png(fig)
