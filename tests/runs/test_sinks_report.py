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
from report_check import tiny_run


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


def test_report_shows_stages_plots_and_samples(tmp_path):
    page = write_report(tiny_run(tmp_path)).read_text()
    assert '<td>base</td><td>eval</td><td class="nowrap">0.500<br><span class="ci">[0.200, 0.800]</span></td>' in page
    assert "Held-out accuracy per stage" in page and "Stage sft (sft)" in page and "Stage grpo (rl)" in page
    # accuracy bars, lengths (one sample), sft curves; grpo: eval_top1 curve, time breakdown, curves
    assert page.count("data:image/png;base64,") == 6
    assert "Answer: &lt;4&gt;" in page  # sample text is escaped
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_report_has_one_row_per_measurement_with_the_paired_gain(tmp_path):
    page = write_report(tiny_run(tmp_path)).read_text()
    assert page.count(">0.750<br>") == 1 and page.count(">0.800<br>") == 1  # not repeated on sft, grpo
    assert '<tr class="train"><td>sft</td><td>sft</td><td class="note" colspan="10">3 step(s), final loss 0.33; ' \
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
