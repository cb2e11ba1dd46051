"""The evaluation stage: metrics on a tiny model, and (slow) the real default model on GSM8K."""

import pytest

from reasonloop.config import EvalStage, TaskConfig
from reasonloop.models import load_model
from reasonloop.runs.store import RunStore
from reasonloop.stages.evaluate import evaluate, majority_is_correct
from reasonloop.tasks.base import Problem


def test_majority_votes_group_by_the_value_correctness_reads():
    # "18 dollars", "18" and "18 apples" are one vote for 18 (3 votes) against 2 for 20.
    answers = ["18 dollars", "18", "18 apples", "20", "20"]
    assert majority_is_correct(answers, [True, True, True, False, False])
    assert not majority_is_correct(["20", "20", "18"], [False, False, True])
    assert not majority_is_correct([None, None], [False, False])
    assert majority_is_correct([None, None, "5"], [False, False, True])  # no answer casts no vote


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


class ScriptedEngine:
    """Returns fixed completions per problem (in prompt order) through the real evaluation code path, so
    the metrics below are checked against hand-computed values instead of a random model's zeros."""

    def __init__(self, greedy: list[str], sampled: list[list[str]]):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, prompts, params, progress=True, keys=None):
        from reasonloop.generate.base import Sample

        script = [[g] for g in self.greedy] if params.temperature == 0 else self.sampled
        assert len(prompts) == len(script)
        return [[Sample(prompt_index=i, token_ids=[0] * (len(t) // 4), logprobs=[0.0] * (len(t) // 4),
                        finish_reason="eos", text=t) for t in script[i][: params.n]] for i in range(len(prompts))]


SCRIPT_PROBLEMS = [Problem(id="a", question="a?", answer="18"), Problem(id="b", question="b?", answer="7"),
                   Problem(id="c", question="c?", answer="3")]
SCRIPT = ScriptedEngine(
    greedy=["Answer: 18", "Answer: 8", "Answer: 3 apples"],
    sampled=[["Answer: 18 dollars", "Answer: 18", "Answer: 18 apples", "Answer: 20", "Answer: 20"],
             ["Answer: 8", "Answer: 8", "Answer: 7", "no idea", "Answer: 8"],
             ["no idea"] * 5])


@pytest.mark.parametrize("k, maj, pass_k", [
    # maj@5: a's three 18s (three spellings) outvote two 20s; b votes 8; c casts no vote -> 1/3.
    # pass@5 with n=5: a and b have a correct sample -> 2/3.
    (5, 1 / 3, 2 / 3),
    # k=3 of n=5, unbiased pass@k = 1 - C(n-c, k)/C(n, k): a (c=3) 1, b (c=1) 1 - 4/10 = 0.6, c 0.
    # maj@3 reads the first 3 answers: a 18 (right), b 8 (wrong).
    (3, 1 / 3, 1.6 / 3),
])
def test_evaluate_metrics_on_scripted_completions(tokenizer, k, maj, pass_k):
    cfg = EvalStage(kind="eval", k=k, n=5, seeds=1, decoding={"max_new_tokens": 8})
    res = evaluate(None, tokenizer, SCRIPT_PROBLEMS, TaskConfig(), cfg, engine=SCRIPT, progress=False)
    assert res["top1"] == pytest.approx(2 / 3)  # "Answer: 3 apples" is 3
    assert res["maj_k"] == pytest.approx(maj) and res["pass_k"] == pytest.approx(pass_k)


@pytest.mark.slow
def test_default_model_on_20_gsm8k_problems(tmp_path):
    from reasonloop.tasks import load_task

    model, tok = load_model("default")
    test = load_task(TaskConfig()).test[:20]
    res = evaluate(model, tok, test, TaskConfig(), EvalStage(kind="eval", k=0), progress=False)
    assert res["n"] == 20 and 0.0 <= res["top1"] <= 0.5 and res["mean_tokens"] > 20
