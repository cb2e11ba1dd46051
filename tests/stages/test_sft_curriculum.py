"""SFT with a curriculum: the stage orders its examples by the chosen difficulty, and trains in that order."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from reasonloop.config import Recipe
from reasonloop.curriculum.sft_order import static_order
from reasonloop.errors import UserError
from reasonloop.models import load_model
from reasonloop.pipeline import RunContext, run_pipeline
from reasonloop.runs.store import RunStore
from reasonloop.stages.sft import SftTrainer, make_plan, sft_order_fn
from reasonloop.stages.sft_data import examples_from_pairs, gold_pairs
from reasonloop.tasks import train_subset

N = 8


def task(tmp_path) -> dict:
    # Metadata difficulty runs against the file order: d0 is the hardest (7), d7 the easiest (0).
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i),
                                        "reasoning": f"{i} + {i} = {2 * i}", "difficulty": N - 1 - i}) + "\n"
                            for i in range(N)))
    return {"source": "jsonl", "train": str(path), "test": str(path),
            "fields": {"id": "id", "reasoning": "reasoning", "difficulty": "difficulty"}}


def sft_stage(**curriculum) -> dict:
    return {"kind": "sft", "name": "sft", "epochs": 1, "batch_tokens": 96, "save_every": 100,
            "optim": {"lr": 2e-2, "warmup_steps": 0, "schedule": "constant"}, "curriculum": curriculum}


def planned_ids(tmp_path, model_dir, tokenizer, store=None, **curriculum) -> list[str]:
    """Problem ids in the order the stage's plan trains them (one epoch)."""
    recipe = Recipe(model={"path": str(model_dir)}, task=task(tmp_path), stages=[sft_stage(**curriculum)])
    ctx = RunContext(recipe=recipe, run_dir=tmp_path / "run", store=store or RunStore(tmp_path / "s.sqlite"),
                     progress=False)
    cfg = recipe.stages[0]
    train = train_subset(ctx.task.train, cfg)
    pairs = gold_pairs(tokenizer, train, recipe.task)
    examples = examples_from_pairs(tokenizer, pairs, cfg.max_length)
    plan = make_plan(examples, cfg, sft_order_fn(ctx, cfg, examples, pairs, "sft"))
    return [examples[i].problem_id for mb in plan.microbatches for i in mb]


def test_static_metadata_trains_easy_to_hard(tmp_path, tiny_model_dir, tokenizer):
    assert planned_ids(tmp_path, tiny_model_dir, tokenizer, scheduler="static") == [f"d{i}" for i in
                                                                                   reversed(range(N))]
    shuffled = planned_ids(tmp_path, tiny_model_dir, tokenizer)  # no curriculum: the seeded shuffle
    assert sorted(shuffled) == sorted(f"d{i}" for i in range(N)) and shuffled != [f"d{i}" for i in range(N)][::-1]


def test_static_length_and_measured_pass_rate(tmp_path, tiny_model_dir, tokenizer):
    # length: the gold reasoning's words; all are 5 words long here, so the order is the seeded tie-break
    by_length = planned_ids(tmp_path, tiny_model_dir, tokenizer, scheduler="static", difficulty="length")
    assert sorted(by_length) == sorted(f"d{i}" for i in range(N))
    # pass_rate: an earlier stage's measurement in the run store; d3 solved most often, d5 least
    store = RunStore(tmp_path / "m.sqlite")
    store.set_problem_stats("rft", "pass_rate", {"d3": 1.0, "d1": 0.75, "d6": 0.5, "d5": 0.0})
    got = planned_ids(tmp_path, tiny_model_dir, tokenizer, store=store, scheduler="static", difficulty="pass_rate")
    # unmeasured problems get the median of the measured ones' normalised difficulties (between d1 and d6)
    assert got[:2] == ["d3", "d1"] and got[-2:] == ["d6", "d5"]


def test_pass_rate_with_nothing_measured_names_the_field(tmp_path, tiny_model_dir, tokenizer):
    with pytest.raises(UserError, match=r"^stages\[0\].curriculum.difficulty: 'pass_rate' gives no difficulty here "
                                        r"\(no problem of this task has a measured pass rate\); choose another"):
        planned_ids(tmp_path, tiny_model_dir, tokenizer, scheduler="anneal", difficulty="pass_rate")


@pytest.mark.e2e
def test_the_stage_trains_in_the_curriculum_order(tmp_path, tiny_model_dir, tokenizer):
    """The pipeline's SFT stage with `static` ends with the weights of the same trainer fed the static order
    by hand, and with other weights than the shuffled order: the stage really trains in that order."""
    recipe = Recipe(model={"path": str(tiny_model_dir)}, task=task(tmp_path), stages=[sft_stage(scheduler="static")],
                    run={"engine": "torch"})
    run_pipeline(recipe, tmp_path / "run", progress=False)
    staged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "stages" / "sft" / "model").state_dict()

    cfg = recipe.stages[0]
    from reasonloop.tasks import load_task

    problems = load_task(recipe.task).train
    examples = examples_from_pairs(tokenizer, gold_pairs(tokenizer, problems, recipe.task), cfg.max_length)
    difficulty = [(N - 1 - int(e.problem_id[1:])) / (N - 1) for e in examples]

    def by_hand(order_fn):
        model, _ = load_model(str(tiny_model_dir), trainable=True)
        SftTrainer(model, tokenizer, examples, cfg, order_fn=order_fn).train(progress=False)
        return model.state_dict()

    ordered = by_hand(lambda epoch: static_order(difficulty, cfg.seed, epoch))
    shuffled = by_hand(None)
    assert all(torch.allclose(staged[k], ordered[k], atol=1e-6) for k in ordered)
    assert any(not torch.allclose(staged[k], shuffled[k], atol=1e-4) for k in shuffled)


def test_jsonl_pairs_of_no_task_problem_are_ordered_by_their_own_response(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "pairs.jsonl"
    words = {"j0": 6, "j1": 2, "j2": 4}  # response lengths in words: j1 shortest, j0 longest
    data.write_text("".join(json.dumps({"id": pid, "question": f"Q {pid}?", "response": " ".join(["w"] * n)}) + "\n"
                            for pid, n in words.items()))
    stage = {**sft_stage(scheduler="static", difficulty="length"), "data": "jsonl", "data_path": str(data)}
    recipe = Recipe(model={"path": str(tiny_model_dir)}, task=task(tmp_path), stages=[stage])
    ctx = RunContext(recipe=recipe, run_dir=tmp_path / "run", store=RunStore(tmp_path / "s.sqlite"), progress=False)
    from reasonloop.stages.sft_data import jsonl_pairs

    pairs = jsonl_pairs(tokenizer, str(data), recipe.task)
    examples = examples_from_pairs(tokenizer, pairs, 128)
    order = sft_order_fn(ctx, recipe.stages[0], examples, pairs, "sft")(0)
    assert [examples[i].problem_id for i in order] == ["j1", "j2", "j0"]
