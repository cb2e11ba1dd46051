"""Metric sinks get what the store gets; the report shows the stages, plots and samples of a run folder."""

import json
import sys
import types

import pytest

from reasonloop.errors import UserError
from reasonloop.runs.report import write_report
from reasonloop.runs.report_plots import stacked_phases
from reasonloop.runs.sinks import make_sinks
from reasonloop.runs.store import RunStore


def test_sinks_receive_every_store_log_with_stage_prefixes(tmp_path, monkeypatch):
    logged, finished = [], []
    run = types.SimpleNamespace(log=logged.append, finish=lambda: finished.append(True))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: run))
    store = RunStore(tmp_path / "store.sqlite")
    store.sinks = make_sinks(["wandb"], tmp_path)
    store.log_metrics("sft", 3, {"loss": 0.5, "skipped": None})
    assert logged == [{"sft/loss": 0.5, "sft/step": 3}]
    store.close()


def test_missing_sink_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(UserError, match=r"run.report_to: mlflow needs `pip install mlflow`"):
        make_sinks(["mlflow"], tmp_path)


def tiny_run(run_dir):
    """A run folder as the pipeline leaves it (eval, sft, eval, rl, eval), written by hand: every plot of the
    report has data, and the numbers are known."""
    store = RunStore(run_dir / "store.sqlite")
    store.start_stage("base", "eval", 0)
    store.add_samples("base", 0, [{"problem_id": "p1", "prompt": "What is 2 + 2?", "completion": "Answer: <4>",
                                   "reward": 1.0, "correct": True, "tokens": 3}])
    store.finish_stage("base", {"top1": 0.5, "top1_ci95": [0.2, 0.8], "n": 2, "mean_tokens": 3.0})
    store.start_stage("sft", "sft", 1)
    for step in (1, 2, 3):
        store.log_metrics("sft", step, {"loss": 1.0 / step})
    store.finish_stage("sft", {"final_loss": 0.33})
    store.start_stage("eval_sft", "eval", 2)
    store.finish_stage("eval_sft", {"top1": 0.75, "top1_ci95": [0.4, 0.9], "n": 2, "mean_tokens": 5.0})
    store.start_stage("grpo", "rl", 3)
    for step in (1, 2, 3, 4):
        times = {"time/generate": 2.0, "time/judge": 0.1, "time/old_logprobs": 0.3, "time/update": 1.0,
                 "time/sync": 0.05} | ({"time/eval": 1.5, "eval_top1": 0.25 * step / 2} if step % 2 == 0 else {})
        store.log_metrics("grpo", step, {"loss": 0.1 * step, "reward_mean": 0.2 + 0.05 * step,
                                         "flat_share": 0.5, "curriculum/seen_share": step / 4, **times})
    store.finish_stage("grpo", {"final_loss": 0.4, "final_reward": 0.4, "steps": 4})
    store.start_stage("eval_grpo", "eval", 4)
    store.finish_stage("eval_grpo", {"top1": 0.8, "top1_ci95": [0.5, 0.95], "n": 2, "mean_tokens": 6.0})
    store.close()
    base = {"top1": 0.5, "top1_ci95": [0.2, 0.8], "n": 2, "mean_tokens": 3.0, "maj_k": None}
    after_sft = {"top1": 0.75, "top1_ci95": [0.4, 0.9], "n": 2, "mean_tokens": 5.0, "maj_k": None,
                 "paired": {"vs": "base", "n": 2, "delta": 0.25, "delta_ci95": [-0.3, 0.7], "p_value": 1.0,
                            "wins": 1, "losses": 0}}
    after_rl = {"top1": 0.8, "top1_ci95": [0.5, 0.95], "n": 2, "mean_tokens": 6.0, "maj_k": None,
                "paired": {"vs": "eval_sft", "n": 2, "delta": 0.05, "delta_ci95": [-0.2, 0.3], "p_value": 0.03,
                           "wins": 9, "losses": 1}}
    # as pipeline._summary_entries writes it: a training stage carries the next eval's numbers
    (run_dir / "summary.json").write_text(json.dumps({"stages": [
        {"name": "base", "kind": "eval", "seconds": 1.0, "eval": base},
        {"name": "sft", "kind": "sft", "seconds": 2.0, "final_loss": 0.33, "steps": 3, "eval": after_sft},
        {"name": "eval_sft", "kind": "eval", "seconds": 1.0, "eval": after_sft},
        {"name": "grpo", "kind": "rl", "seconds": 9.0, "final_loss": 0.4, "steps": 4, "eval": after_rl},
        {"name": "eval_grpo", "kind": "eval", "seconds": 1.0, "eval": after_rl}]}))
    return run_dir


def test_report_shows_stages_plots_and_samples(tmp_path):
    page = write_report(tiny_run(tmp_path)).read_text()
    assert '<td>base</td><td>eval</td><td>0.500</td><td class="nowrap">0.200–0.800</td>' in page
    assert "Held-out accuracy per stage" in page and "Stage sft (sft)" in page and "Stage grpo (rl)" in page
    # accuracy bars, lengths (one sample), sft curves; grpo: eval_top1 curve, time breakdown, curves
    assert page.count("data:image/png;base64,") == 6
    assert "Answer: &lt;4&gt;" in page  # sample text is escaped
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_report_has_one_row_per_measurement_with_the_paired_gain(tmp_path):
    page = write_report(tiny_run(tmp_path)).read_text()
    assert page.count("<td>0.750</td>") == 1 and page.count("<td>0.800</td>") == 1  # not repeated on sft, grpo
    assert '<tr class="train"><td>sft</td><td>sft</td><td class="note" colspan="11">3 step(s), final loss 0.33; ' \
           'measured by eval_sft below</td>' in page
    assert "measured by eval_grpo below" in page
    row = page[page.index("<td>eval_grpo</td>"):].split("</tr>")[0]
    assert '+0.050 [-0.200, +0.300]</td><td>eval_sft</td><td class="nowrap">9 / 1</td><td>0.03</td>' \
           '<td class="raises">raises</td>' in row


def test_time_phases_stack_in_step_order_with_zero_where_a_phase_did_not_run():
    steps, stacked = stacked_phases({"generate": [(1, 2.0), (2, 3.0)], "eval": [(2, 1.5)]})
    assert steps == [1, 2] and stacked == {"generate": [2.0, 3.0], "eval": [0.0, 1.5]}


def test_counts_get_integer_ticks_and_few_points_get_markers(tmp_path, monkeypatch):
    import reasonloop.runs.report_plots as plots

    monkeypatch.setattr(plots, "png", lambda fig: fig)  # keep the figure to read its axes
    store = RunStore(tmp_path / "store.sqlite")
    store.set_problem_stats("rft", "distinct_paths", {"q1": 0.0, "q2": 0.0, "q3": 2.0})
    store.log_metrics("rl", 1, {"loss": 1.0})
    store.log_metrics("rl", 2, {"loss": 0.5})
    ax = plots.paths_plot(store).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert all(float(y).is_integer() for y in ax.get_yticks())  # questions: no 2.5
    [ax] = [a for a in plots.curve_plots(store, "rl")[0].axes if a.get_visible() and a.axison]
    assert all(float(x).is_integer() for x in ax.get_xticks()) and ax.lines[0].get_marker() == "o"
    store.close()
