"""report.html: one self-contained page (plots embedded as PNG data URIs, no CDN) from a run folder."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reasonloop.atomic import write_text_atomic  # noqa: E402
from reasonloop.runs.compare import SIGNIFICANCE, delta_text, verdict  # noqa: E402
from reasonloop.runs.store import RunStore  # noqa: E402

CURVE_KEYS = ("loss", "reward_mean", "accuracy", "eval_top1", "flat_share", "kl", "entropy", "response_tokens", "lr",
              "tokens_per_s")
CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:24px auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}.ok{color:#176d2c}.bad{color:#a11}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;font-size:12px;border-left:3px solid #ccc}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def accuracy_plot(stages: list[dict]) -> str | None:
    rows = [s for s in stages if s["kind"] == "eval" and s.get("result") and "top1" in s["result"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(rows)), 3.2))
    tops = [r["result"]["top1"] for r in rows]
    lo = [t - r["result"]["top1_ci95"][0] for t, r in zip(tops, rows)]
    hi = [r["result"]["top1_ci95"][1] - t for t, r in zip(tops, rows)]
    ax.bar(range(len(rows)), tops, yerr=[lo, hi], capsize=5, color="#4c78a8")
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows])
    ax.set_ylabel("held-out top-1 (95% CI)")
    ax.set_ylim(0, max(0.05, max(t + h for t, h in zip(tops, hi)) * 1.15))
    return _png(fig)


def curve_plots(store: RunStore, stage: str) -> list[str]:
    keys = store.metric_keys(stage)
    chosen = [k for k in keys if k in CURVE_KEYS or k.startswith("curriculum/")]
    if not chosen:
        return []
    cols = 3
    nrows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 2.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, chosen):
        pts = store.metrics(stage, key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    return [_png(fig)]


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
    return _png(fig)


def paths_plot(store: RunStore) -> str | None:
    values = list(store.problem_stats("distinct_paths").values())
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    top = int(max(values))
    ax.hist(values, bins=range(0, top + 2), align="left", rwidth=0.85, color="#59a14f")
    ax.set_xlabel("distinct correct paths per question (RFT)")
    ax.set_ylabel("questions")
    return _png(fig)


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
    return _png(fig)


def _samples_html(store: RunStore, stage: str, each: int = 2) -> str:
    parts = []
    for correct in (True, False):
        for r in store.samples(stage, limit=each, correct=correct):
            cls, mark = ("ok", "correct") if correct else ("bad", "wrong")
            parts.append(f'<p class="{cls}">{mark}: gold {html.escape(str(r["gold"]))}, extracted '
                         f'{html.escape(str(r["answer"]))}</p><pre>{html.escape(r["completion"])}</pre>')
    return "".join(parts)


LEGEND = (
    "<p><b>vs previous eval</b>: the change in greedy top-1 against the evaluation before it, paired problem "
    "by problem on the problems both evaluated, with its 95% interval (Newcombe's method for paired "
    "proportions). <b>won / lost</b>: problems right now and wrong before, and the reverse. <b>p</b>: exact "
    "two-sided McNemar test on the won and lost problems. A stage <b>raises accuracy</b> (or lowers it) when "
    f"p &lt; {SIGNIFICANCE}; otherwise the test cannot tell the change from chance on these problems. "
    "<b>sampled</b>: mean accuracy of all samples drawn at the sampling temperature T (pass@1), 95% interval "
    "over problems; it can move while greedy top-1 does not. When the previous eval sampled too, "
    "&Delta; is the mean paired difference of per-problem sampled accuracy (t-interval over problems).</p>")


def _paired_cells(ev: dict) -> list[str]:
    pr = ev.get("paired")
    if not pr:
        return [f"({ev['paired_skipped']})" if ev.get("paired_skipped") else "", "", "", ""]
    vs = f"{delta_text(pr)} vs {pr['vs']}" + (f", {pr['n']} paired" if pr.get("note") else "")
    return [vs, f"{pr['wins']} / {pr['losses']}", f"{pr['p_value']:.2g}", verdict(pr)]


def _sampled_cell(ev: dict) -> str:
    if ev.get("sampled_acc") is None:
        return ""
    lo, hi = ev["sampled_acc_ci95"]
    text = f"{ev['sampled_acc']:.3f} [{lo:.3f}, {hi:.3f}] T={(ev.get('sampling') or {}).get('temperature', '?')}"
    pr = ev.get("paired") or {}
    if pr.get("sampled_delta") is not None:
        dlo, dhi = pr["sampled_delta_ci95"]
        text += f", Δ {pr['sampled_delta']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
    return text


def _table(summary: dict) -> str:
    head = "<tr><th>stage</th><th>kind</th><th>top-1</th><th>95% CI</th><th>vs previous eval</th>" \
           "<th>won / lost</th><th>p</th><th>verdict</th><th>sampled</th><th>maj@k</th><th>pass@k</th>" \
           "<th>tokens</th><th>seconds</th></tr>"
    rows = []
    for s in summary.get("stages", []):
        ev = s.get("eval") or {}
        ci = ev.get("top1_ci95")
        rate = lambda key: f"{ev[key]:.3f}" if ev.get(key) is not None else ""  # noqa: E731
        cells = [s["name"], s["kind"], rate("top1"), f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "",
                 *(_paired_cells(ev) if ev else [""] * 4), _sampled_cell(ev), rate("maj_k"), rate("pass_k"),
                 f"{ev['mean_tokens']:.0f}" if ev else "", f"{s['seconds']:.0f}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>{LEGEND}"


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    store = RunStore(run_dir / "store.sqlite")
    try:
        stages = store.stages()
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"stages": []}
        body = [f"<h1>reasonloop run: {html.escape(run_dir.name)}</h1>", _table(summary)]
        for title, fig in (("Held-out accuracy per stage", accuracy_plot(stages)),
                           ("Response length", length_plot(store, stages)),
                           ("Distinct RFT paths", paths_plot(store)),
                           ("Verifier score against correctness", verifier_plot(store, stages))):
            if fig:
                body.append(f"<h2>{title}</h2>{fig}")
        for s in stages:
            plots = curve_plots(store, s["name"])
            samples = _samples_html(store, s["name"])
            if plots or samples:
                body.append(f"<h2>Stage {html.escape(s['name'])} ({s['kind']})</h2>" + "".join(plots))
                if samples:
                    body.append(f"<details><summary>sample solutions</summary>{samples}</details>")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>reasonloop report</title>"
                f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
        out = run_dir / "report.html"
        return write_text_atomic(out, page)
    finally:
        store.close()
