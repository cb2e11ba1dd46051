"""report.html: one self-contained page (plots embedded as PNG data URIs, no CDN) from a run folder."""

from __future__ import annotations

import html
import json
from pathlib import Path

from reasonloop.atomic import write_text_atomic
from reasonloop.memory import peak_text
from reasonloop.runs.compare import SIGNIFICANCE, delta_text, verdict
from reasonloop.runs.report_plots import (accuracy_plot, curve_plots, eval_curve_plot, length_plot, paths_plot,
                                          time_plot, verifier_plot)
from reasonloop.runs.store import RunStore

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:24px auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3;white-space:nowrap}img{max-width:100%}.ok{color:#176d2c}.bad{color:#a11}
td.nowrap{white-space:nowrap}.ci{color:#666;font-size:12px}tr.train td{background:#fafafa;color:#666}td.note{text-align:left}
.raises,.lowers{font-weight:600;white-space:nowrap}.raises{color:#176d2c}.lowers{color:#a11}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;font-size:12px;border-left:3px solid #ccc}"""


def _samples_html(store: RunStore, stage: str, each: int = 2) -> str:
    parts = []
    for correct in (True, False):
        for r in store.samples(stage, limit=each, correct=correct):
            cls, mark = ("ok", "correct") if correct else ("bad", "wrong")
            parts.append(f'<p class="{cls}">{mark}: gold {html.escape(str(r["gold"]))}, extracted '
                         f'{html.escape(str(r["answer"]))}</p><pre>{html.escape(r["completion"])}</pre>')
    return "".join(parts)


LEGEND = (
    "<p>One row per measurement: a training stage's row says what it trained and which eval measured the "
    "model it wrote. <b>gain over previous eval</b>: the change in greedy top-1 against the evaluation before "
    "it (<b>vs</b>), paired problem by problem on the problems both evaluated, with its 95% interval "
    "(Newcombe's method for paired proportions). <b>won / lost</b>: problems right now and wrong before, and "
    "the reverse. <b>p</b>: exact two-sided McNemar test on the won and lost problems. A stage <b>raises</b> "
    f"accuracy (or <b>lowers</b> it) when p &lt; {SIGNIFICANCE}; otherwise the test cannot tell the change "
    "from chance on these problems. <b>sampled</b>: mean accuracy of all samples drawn at the sampling "
    "temperature T (pass@1), 95% interval over problems; it can move while greedy top-1 does not. When the "
    "previous eval sampled too, &Delta; is the mean paired difference of per-problem sampled accuracy "
    "(t-interval over problems). <b>peak MB</b>: the stage's peak resident memory in MB (&le;: the whole "
    "process's peak, where it could not be reset per stage; + GPU: peak CUDA memory allocated by torch).</p>")
HEAD = ("stage", "kind", "top-1<br>[95% CI]", "gain over previous<br>eval [95% CI]", "vs", "won / lost", "p", "verdict",
        "sampled", "maj@k", "pass@k", "tokens", "seconds", "peak MB")
TRAINING_FIELDS = (("steps", "{:d} step(s)"), ("examples", "{:d} examples"), ("kept", "{:d} kept"),
                   ("final_loss", "final loss {:.4g}"), ("final_reward", "final reward {:.3f}"))


def _seconds(entry: dict) -> str:
    return f"{entry['seconds']:.1f}" if entry["seconds"] < 10 else f"{entry['seconds']:.0f}"


def _td(text: str, cls: str = "") -> str:
    """One cell; `text` is already HTML (escaped where it came from the run)."""
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _paired_cells(ev: dict) -> list[str]:
    pr = ev.get("paired")
    if not pr:
        skipped = html.escape(f"({ev['paired_skipped']})") if ev.get("paired_skipped") else ""
        return [_td(skipped, "note"), *[_td("")] * 4]
    vs = html.escape(pr["vs"]) + (f" ({pr['n']} paired)" if pr.get("note") else "")
    word = verdict(pr)
    return [_td(delta_text(pr), "nowrap"), _td(vs), _td(f"{pr['wins']} / {pr['losses']}", "nowrap"),
            _td(f"{pr['p_value']:.2g}"), _td(word, {"raises": "raises", "lowers": "lowers"}.get(word, ""))]


def _sampled_cell(ev: dict) -> str:
    if ev.get("sampled_acc") is None:
        return _td("")
    lo, hi = ev["sampled_acc_ci95"]
    temperature = (ev.get("sampling") or {}).get("temperature", "?")
    text = f"{ev['sampled_acc']:.3f} at T={html.escape(str(temperature))}<br>[{lo:.3f}, {hi:.3f}]"
    pr = ev.get("paired") or {}
    if pr.get("sampled_delta") is not None:
        dlo, dhi = pr["sampled_delta_ci95"]
        text += f"<br>Δ {pr['sampled_delta']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
    return _td(text, "nowrap")


def _eval_row(s: dict) -> str:
    ev = s["eval"]
    rate = lambda key: f"{ev[key]:.3f}" if ev.get(key) is not None else ""  # noqa: E731
    lo, hi = ev["top1_ci95"]
    top1 = f'{rate("top1")}<br><span class="ci">[{lo:.3f}, {hi:.3f}]</span>'
    cells = [_td(html.escape(s["name"])), _td("eval"), _td(top1, "nowrap"),
             *_paired_cells(ev), _sampled_cell(ev), _td(rate("maj_k")), _td(rate("pass_k")),
             _td(f"{ev['mean_tokens']:.0f}" if ev.get("mean_tokens") is not None else ""), _td(_seconds(s)),
             _td(peak_text(s))]
    return "<tr>" + "".join(cells) + "</tr>"


def _training_row(s: dict, measured_by: str | None) -> str:
    """A stage that trains measures nothing itself: its row says what it did and which eval measured it
    (summary.json repeats that eval's numbers on it, which in a table reads as a second measurement)."""
    done = [fmt.format(s[key]) for key, fmt in TRAINING_FIELDS if isinstance(s.get(key), (int, float))]
    note = ", ".join(done) or s.get("status", "")
    note += f"; measured by {measured_by} below" if measured_by else "; not evaluated"
    cells = [_td(html.escape(s["name"])), _td(html.escape(s["kind"])),
             f'<td class="note" colspan="{len(HEAD) - 4}">{html.escape(note)}</td>', _td(_seconds(s)),
             _td(peak_text(s))]
    return '<tr class="train">' + "".join(cells) + "</tr>"


def _table(summary: dict) -> str:
    entries = summary.get("stages", [])
    rows = []
    for i, s in enumerate(entries):
        if s["kind"] == "eval":
            rows.append(_eval_row(s) if (s.get("eval") or {}).get("top1_ci95") else _training_row(s, None))
        else:
            after = entries[i + 1] if i + 1 < len(entries) else None
            rows.append(_training_row(s, after["name"] if after and after["kind"] == "eval" else None))
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in HEAD) + "</tr>"
    return f"<table>{head}{''.join(rows)}</table>{LEGEND}"


ABLATION_LEGEND = (
    "<p>Each arm after the first is paired with the first (the baseline) on the problems both evaluated: "
    "&Delta; with Newcombe's 95% interval, <b>won / lost</b> against the baseline, <b>p</b> the exact McNemar "
    "test, <b>p (Holm)</b> the same adjusted for the number of arms (Holm's step-down). An arm is <b>better</b> "
    f"or <b>worse</b> than the baseline when p (Holm) &lt; {SIGNIFICANCE}; otherwise these problems cannot tell "
    "it from the baseline. <b>&Delta; tokens</b>: mean paired change in the greedy answer's length.</p>")


def _ablation_table(summary: dict) -> str:
    """The `run.ablation` arms side by side (runs/ablation.py), or nothing without an ablation."""
    from reasonloop.runs.ablation import ablation_verdict

    arms = summary.get("ablation") or {}
    if not arms:
        return ""
    first = next(iter(arms))
    head = ("arm", "top-1<br>[95% CI]", f"&Delta; vs {html.escape(first)}<br>[95% CI]", "won / lost", "p",
            "p (Holm)", "verdict", "tokens", "&Delta; tokens")
    rows = []
    for arm, row in arms.items():
        lo, hi = row["top1_ci95"]
        cmp = row.get("vs_first") or {}
        if "p_value" in cmp:
            word = ablation_verdict(cmp)
            tested = [_td(delta_text(cmp), "nowrap"), _td(f"{cmp['wins']} / {cmp['losses']}", "nowrap"),
                      _td(f"{cmp['p_value']:.2g}"), _td(f"{cmp['p_holm']:.2g}"),
                      _td(word, {"better": "raises", "worse": "lowers"}.get(word, ""))]
        else:
            note = "baseline" if arm == first else cmp.get("skipped", "")
            tested = [_td(html.escape(note), "note"), *[_td("")] * 4]
        dtok = f"{cmp['tokens_delta']:+.1f}" if cmp.get("tokens_delta") is not None else ""
        tokens = f"{row['mean_tokens']:.1f}" if row.get("mean_tokens") is not None else ""
        rows.append("<tr>" + "".join([_td(html.escape(arm)), _td(f'{row["top1"]:.3f}<br><span class="ci">'
                                                                 f"[{lo:.3f}, {hi:.3f}]</span>", "nowrap"),
                                      *tested, _td(tokens), _td(dtok)]) + "</tr>")
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f"<h2>Ablation</h2><table>{header}{''.join(rows)}</table>{ABLATION_LEGEND}"


def _stage_section(store: RunStore, stage: dict) -> str:
    name = stage["name"]
    plots = [p for p in (eval_curve_plot(store, name), time_plot(store, name)) if p] + curve_plots(store, name)
    samples = _samples_html(store, name)
    if not plots and not samples:
        return ""
    section = f"<h2>Stage {html.escape(name)} ({html.escape(stage['kind'])})</h2>" + "".join(plots)
    if samples:
        section += f"<details><summary>sample solutions</summary>{samples}</details>"
    return section


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    store = RunStore(run_dir / "store.sqlite")
    try:
        stages = store.stages()
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"stages": []}
        body = [f"<h1>reasonloop run: {html.escape(run_dir.name)}</h1>", _table(summary), _ablation_table(summary)]
        for title, fig in (("Held-out accuracy per stage", accuracy_plot(stages)),
                           ("Response length", length_plot(store, stages)),
                           ("Distinct RFT paths", paths_plot(store)),
                           ("Verifier score against correctness", verifier_plot(store, stages))):
            if fig:
                body.append(f"<h2>{title}</h2>{fig}")
        body.extend(_stage_section(store, s) for s in stages)
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>reasonloop report</title>"
                f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
        out = run_dir / "report.html"
        return write_text_atomic(out, page)
    finally:
        store.close()
