"""Metric sinks get what the store gets; the report shows the stages, plots and samples of a run folder."""

import json
import sys
import types

import pytest

from reasonloop.errors import UserError
from reasonloop.runs.report import write_report
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


def test_report_shows_stages_plots_and_samples(tmp_path):
    store = RunStore(tmp_path / "store.sqlite")
    store.start_stage("base", "eval", 0)
    store.add_samples("base", 0, [{"problem_id": "p1", "prompt": "What is 2 + 2?", "completion": "Answer: <4>",
                                   "reward": 1.0, "correct": True, "tokens": 3}])
    store.finish_stage("base", {"top1": 0.5, "top1_ci95": [0.2, 0.8], "n": 2, "mean_tokens": 3.0})
    store.start_stage("sft", "sft", 1)
    for step in (1, 2, 3):
        store.log_metrics("sft", step, {"loss": 1.0 / step})
    store.finish_stage("sft", {"final_loss": 0.33})
    store.close()
    (tmp_path / "summary.json").write_text(json.dumps({"stages": [
        {"name": "base", "kind": "eval", "seconds": 1.0,
         "eval": {"top1": 0.5, "top1_ci95": [0.2, 0.8], "n": 2, "mean_tokens": 3.0, "maj_k": None}},
        {"name": "sft", "kind": "sft", "seconds": 2.0}]}))
    page = write_report(tmp_path).read_text()
    assert "<td>base</td><td>eval</td><td>0.500</td><td>0.200–0.800</td>" in page
    assert "Held-out accuracy per stage" in page and "Stage sft (sft)" in page
    assert page.count("data:image/png;base64,") >= 2  # the accuracy bars and the sft loss curve
    assert "Answer: &lt;4&gt;" in page  # sample text is escaped
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
