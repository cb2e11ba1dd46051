"""The verifier stage on a tiny model: it learns, changes weights, resumes to the same losses, saves a folder
transformers loads (scores equal to reasonloop's packed ones), and serves eval's rerank@k and RL's reward."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import digit_model_dir
from reasonloop.config import EvalStage, Recipe, TaskConfig, VerifierStage
from reasonloop.errors import UserError
from reasonloop.models import save_hf_folder
from reasonloop.pipeline import run_pipeline
from reasonloop.runs.store import RunStore
from reasonloop.stages import verifier as verifier_stage
from reasonloop.stages.sft_data import Example
from reasonloop.stages.verifier import VerifierTrainer, split_questions, verifier_quality
from reasonloop.verifier_model import check_verifier_folder, load_verifier, new_verifier, score_solutions, verifier_ids

PROMPT = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
RESPONSES = ["2 + 3 = 5\nAnswer: 5", "2 + 3 = 6\nAnswer: 6", "So 5.\nAnswer: 5", "Answer: 7", "2 + 3 = 5 Answer: 5",
             "3 + 2 = 9\nAnswer: 9"]
LABELS = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def cfg(**update) -> VerifierStage:
    base = {"kind": "verifier", "max_steps": 8, "epochs": 8, "batch_tokens": 64, "save_every": 2,
            "optim": {"lr": 3e-3, "schedule": "constant", "warmup_steps": 0}}
    return VerifierStage(**{**base, **update})


def examples(tokenizer):
    return [Example(*verifier_ids(tokenizer, PROMPT, r)) for r in RESPONSES]


def test_split_questions_is_seeded_and_leaves_some_to_train_on():
    ids = [f"q{i}" for i in range(10) for _ in range(3)]  # 3 samples of each of 10 questions
    held = split_questions(ids, 0.2, seed=0)
    assert len(held) == 2 and held == split_questions(ids, 0.2, seed=0) and held != split_questions(ids, 0.2, seed=1)
    assert split_questions(["a", "b"], 0.9, 0) in ({"a"}, {"b"})  # never every question
    assert split_questions(["a", "a"], 0.5, 0) == set() and split_questions(ids, 0.0, 0) == set()


def test_verifier_quality_by_hand():
    q = verifier_quality([2.0, -1.0, 0.5, -3.0], [True, False, False, False])
    assert q["accuracy"] == 0.75 and q["auc"] == 1.0 and q["base_rate"] == 0.25 and q["n"] == 4
    assert q["right"] == 1  # logged beside the AUC: one right sample makes it that sample's rank, 0 or 1
    assert verifier_quality([], []) == {}


@pytest.mark.parametrize("objective", ["outcome", "token"])
def test_verifier_learns_changes_weights_and_resumes(tiny_model_dir, tokenizer, tmp_path, monkeypatch, objective):
    c = cfg(objective=objective)
    m1, tok = new_verifier(str(tiny_model_dir))
    before = [p.detach().clone() for p in m1.parameters()]
    s1 = RunStore(tmp_path / "a.sqlite")
    res = VerifierTrainer(m1, tok, examples(tok), LABELS, c, store=s1, stage="v", ckpt_dir=tmp_path / "ck1",
                          dtype="fp32").train(progress=False)
    losses = [v for _, v in s1.metrics("v", "loss")]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # zero-initialised head: P = 0.5 for every solution
    assert any(not torch.equal(a, b) for a, b in zip(before, m1.parameters())) and res["final_loss"] == losses[-1]

    class Killed(Exception):
        pass

    real, calls = verifier_stage._step_loss, []

    def dies_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise Killed
        return real(*args, **kwargs)

    s2 = RunStore(tmp_path / "b.sqlite")
    m2, _ = new_verifier(str(tiny_model_dir))
    monkeypatch.setattr(verifier_stage, "_step_loss", dies_at_step_5)
    with pytest.raises(Killed):
        VerifierTrainer(m2, tok, examples(tok), LABELS, c, store=s2, stage="v", ckpt_dir=tmp_path / "ck2",
                        dtype="fp32").train(progress=False)
    monkeypatch.setattr(verifier_stage, "_step_loss", real)
    m3, _ = new_verifier(str(tiny_model_dir))
    VerifierTrainer(m3, tok, examples(tok), LABELS, c, store=s2, stage="v", ckpt_dir=tmp_path / "ck2",
                    dtype="fp32").train(progress=False)
    assert [v for _, v in s2.metrics("v", "loss")] == pytest.approx(losses, rel=1e-5, abs=1e-6)


def test_saved_verifier_loads_with_transformers_and_scores_the_same(tiny_model_dir, tmp_path):
    model, tok = new_verifier(str(tiny_model_dir))
    with torch.no_grad():
        model.score.weight.normal_()  # a head that tells solutions apart
    out = save_hf_folder(model, tok, tmp_path / "verifier")
    packed = score_solutions(model.eval(), tok, [PROMPT] * 3, RESPONSES[:3])

    # What the README shows: plain transformers, right-padded batch, logits[:, 0].
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    ids = [verifier_ids(tok, PROMPT, r)[0] for r in RESPONSES[:3]]
    width = max(map(len, ids))
    batch = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    with torch.no_grad():
        logits = plain(input_ids=batch, attention_mask=(torch.arange(width)[None] < torch.tensor(
            [[len(i)] for i in ids])).long()).logits[:, 0]
    assert logits.tolist() == pytest.approx(packed, abs=1e-4)
    assert len(set(round(x, 4) for x in packed)) == 3

    loaded, _ = load_verifier(out, dtype="fp32", device="cpu")
    assert score_solutions(loaded, tok, [PROMPT] * 3, RESPONSES[:3]) == pytest.approx(packed, abs=1e-5)


def test_a_causal_lm_folder_is_refused_as_a_verifier(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="not a verifier .*sequence-classification"):
        check_verifier_folder(tiny_model_dir)
    with pytest.raises(UserError, match="no config.json"):
        check_verifier_folder(tmp_path)


def test_eval_with_a_verifier_needs_samples():
    with pytest.raises(ValueError, match="verifier: reranking needs sampled solutions"):
        EvalStage(kind="eval", k=0, verifier="v")


def toy_task(tmp_path):
    golds = ["7", "7", "3", "7", "7", "3"]  # the digit model mostly answers 7: its samples are right and wrong
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": f"Pick the digit number {i}.", "answer": g})
                            + "\n" for i, g in enumerate(golds)))
    return {"source": "jsonl", "train": str(path), "test": str(path), "extract": ["last_number"]}


@pytest.fixture(scope="module")
def digit_dir(tmp_path_factory, tokenizer):
    return digit_model_dir(tokenizer, tmp_path_factory.mktemp("digit") / "model")


@pytest.mark.e2e
def test_pipeline_trains_a_verifier_then_reranks_and_rewards_with_it(digit_dir, tmp_path):
    stages = [{"kind": "verifier", "name": "ver", "k": 4, "holdout": 0.34, "max_steps": 3, "batch_tokens": 256,
               "decoding": {"temperature": 1.0, "max_new_tokens": 4}, "optim": {"lr": 1e-3}},
              {"kind": "eval", "name": "ev", "k": 4, "verifier": "ver", "decoding": {"max_new_tokens": 4}},
              {"kind": "rl", "name": "rl", "steps": 1, "prompts_per_step": 2, "group_size": 2,
               "reward": ["correct", "verifier:ver"], "reward_weights": [1.0, 0.5], "decoding": {"max_new_tokens": 4}}]
    recipe = Recipe(model={"path": str(digit_dir)}, task=toy_task(tmp_path), stages=stages, run={"engine": "torch"})
    run_dir = tmp_path / "run"
    summary = run_pipeline(recipe, run_dir, progress=False)
    ver, ev, rl = summary["stages"]
    assert ver["samples"] == 24 and ver["heldout_questions"] == 2 and ver["train_questions"] == 4
    assert 0 < ver["sample_accuracy"] < 1 and ver["heldout"]["n"] == 8 and "model" not in ver
    assert "eval" not in ver  # the eval after it measured the policy, not the verifier
    assert AutoModelForSequenceClassification.from_pretrained(run_dir / ver["verifier"]).config.num_labels == 1
    # The verifier did not become the current model: eval and RL went on from the policy.
    assert ev["evaluated_model"] == str(digit_dir)
    brief = ev["eval"]
    for key in ("rerank_k", "weighted_maj_k"):
        assert 0 <= brief[key] <= 1 and brief[f"{key}_ci95"][0] <= brief[key] <= brief[f"{key}_ci95"][1]
    assert set(brief["verifier_paired"]) == {"rerank_vs_top1", "rerank_vs_maj", "weighted_vs_top1", "weighted_vs_maj"}
    assert brief["verifier_paired"]["rerank_vs_maj"]["n"] == 6
    store = RunStore(run_dir / "store.sqlite")
    scored = [json.loads(r["meta"]).get("verifier_score") for r in store.samples("ev")]
    assert sum(s is not None for s in scored) == 6 * 4  # the sampled ones; the greedy ones are not scored
    # 4 samples judged 0/1 make a mean reward in quarters; the verifier's 0.5 * P(correct) term moves it off them.
    assert rl["status"] == "done" and abs(rl["final_reward"] * 4 - round(rl["final_reward"] * 4)) > 1e-6
    assert "Verifier score against correctness" in (run_dir / "report.html").read_text()
    store.close()


@pytest.mark.parametrize("stages, message", [
    ([{"kind": "eval", "name": "e0", "k": 0}, {"kind": "eval", "k": 2, "verifier": "e0"}],
     r"stages\[1\].verifier: 'e0' is not a verifier stage before this one \(earlier verifier stages: none\)"),
    ([{"kind": "rl", "reward": ["correct", "verifier:v"]}, {"kind": "verifier", "name": "v"}],
     r"stages\[0\].reward\[1\]: 'v' is not a verifier stage before this one"),
])
def test_a_verifier_named_by_stage_must_be_an_earlier_verifier_stage(tmp_path, stages, message):
    import yaml

    from reasonloop.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, "stages": stages}))
    with pytest.raises(UserError, match=message):
        load_recipe(path)


def test_eval_naming_a_missing_verifier_folder_fails_in_one_line(digit_dir, tmp_path):
    stages = [{"kind": "eval", "name": "e1", "k": 2, "verifier": str(tmp_path / "nowhere"),
               "decoding": {"max_new_tokens": 2}}]
    recipe = Recipe(model={"path": str(digit_dir)}, task=toy_task(tmp_path), stages=stages, run={"engine": "torch"})
    with pytest.raises(UserError, match="nowhere: not a verifier folder"):
        run_pipeline(recipe, tmp_path / "run", progress=False)


def test_verifier_reward_scores_in_unit_interval_and_names_bad_paths(tiny_model_dir, tmp_path):
    from reasonloop.tasks.base import Problem
    from reasonloop.verify.rewards import build_reward

    model, tok = new_verifier(str(tiny_model_dir))
    with torch.no_grad():
        model.score.weight.normal_()
    out = save_hf_folder(model, tok, tmp_path / "verifier")
    reward = build_reward(["correct", f"verifier:{out}"], [1.0, 0.5], TaskConfig(extract=["last_number"]))
    problems = [Problem(id="a", question="What is 2 + 3?", answer="5")] * 2
    total, parts = reward.breakdown(["Answer: 5", "Answer: 6"], problems)
    scores = parts[f"verifier:{out}"]
    assert all(0 < s < 1 for s in scores) and scores[0] != scores[1]
    assert total == pytest.approx([1 + 0.5 * scores[0], 0.5 * scores[1]])
    with pytest.raises(UserError, match=r"stages\[0\].reward: .*no config.json"):
        build_reward([f"verifier:{tmp_path / 'missing'}"], where="stages[0].reward")
    with pytest.raises(UserError, match="name the verifier folder"):
        build_reward(["verifier:"])


def test_readme_loading_example_gives_reasonloops_scores(tiny_model_dir, tmp_path):
    from pathlib import Path

    from reasonloop.metrics import sigmoid

    model, tok = new_verifier(str(tiny_model_dir))
    with torch.no_grad():
        model.score.weight.normal_()
    out = save_hf_folder(model, tok, tmp_path / "verifier")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("```python\nimport torch\nfrom transformers import AutoModelForSequenceClassification")
    block = readme[start + len("```python\n"): readme.index("```", start + 10)]
    scope: dict = {}
    exec(block.replace('"runs/verifier/stages/verifier/verifier"', repr(str(out))), scope)
    prompt, responses = scope["prompt"], ["4 * 2 = 8\n3 + 8 = 11\nAnswer: 11", "3 + 4 = 7\n7 * 2 = 14\nAnswer: 14"]
    expected = [sigmoid(x) for x in score_solutions(model.eval(), tok, [prompt] * 2, responses)]
    assert scope["p_correct"].tolist() == pytest.approx(expected, abs=1e-5)
