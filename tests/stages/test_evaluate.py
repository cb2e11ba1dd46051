"""The evaluation stage: metrics on a tiny model, and (slow) the real default model on GSM8K."""

import pytest

from reasonloop.config import EvalStage, TaskConfig
from reasonloop.models import load_model
from reasonloop.runs.store import RunStore
from reasonloop.stages.evaluate import evaluate, vote_key
from reasonloop.tasks.base import Problem


def test_vote_key_groups_equal_numbers():
    assert vote_key("72") == vote_key("72.0") == vote_key("7,2") and vote_key(None) is None
    assert vote_key("Yes ") == vote_key("yes")


def test_evaluate_tiny_model_stores_samples_and_pass_rates(tmp_path, tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    problems = [Problem(id=f"p{i}", question=f"{i} + 1?", answer=str(i + 1)) for i in range(3)]
    store = RunStore(tmp_path / "s.sqlite")
    cfg = EvalStage(kind="eval", k=2, n=3, seeds=2, decoding={"max_new_tokens": 5})
    res = evaluate(model, tok, problems, TaskConfig(), cfg, store, "ev", progress=False)
    assert res["n"] == 3 and res["samples_per_problem"] == 3 and len(res["maj_k_per_seed"]) == 2
    assert 0 <= res["top1_ci95"][0] <= res["top1"] <= res["top1_ci95"][1] <= 1
    assert len(store.samples("ev")) == 3 + 2 * 3 * 3  # greedy + seeds x problems x n
    assert set(store.problem_stats("pass_rate", "ev")) == {"p0", "p1", "p2"}


@pytest.mark.slow
def test_default_model_on_20_gsm8k_problems(tmp_path):
    from reasonloop.tasks import load_task

    model, tok = load_model("default")
    test = load_task(TaskConfig()).test[:20]
    res = evaluate(model, tok, test, TaskConfig(), EvalStage(kind="eval", k=0), progress=False)
    assert res["n"] == 20 and 0.0 <= res["top1"] <= 0.5 and res["mean_tokens"] > 20
