"""RFT: path selection, DART stopping, STaR hint removal (exact, by hand) and a tiny-model pipeline run."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from reasonloop.stages.rft_paths import HINT_PREFIX, star_hint_prompt
from reasonloop.config import Recipe, RftStage, TaskConfig
from reasonloop.errors import UserError
from reasonloop.pipeline import RunContext, run_pipeline
from reasonloop.runs.store import RunStore
from reasonloop.stages import rft
from reasonloop.stages.rft_data import (allocate_samples, gold_is_checkable, read_sample_file, select_paths,
                                        summarise, training_question)
from reasonloop.tasks.base import Problem

from conftest import digit_model_dir

PROBLEM = Problem(id="q1", question="Tom has 3 bags of 4 apples and eats 2. How many are left?", answer="10",
                  reasoning="3 * 4 = 12 apples. 12 - 2 = 10.")
GOLD = "3 * 4 = 12 apples. 12 - 2 = 10.\nAnswer: 10"


def cand(text, correct=True, source="sample", **extra):
    return {"problem_id": "q1", "completion": text, "correct": correct, "source": source, **extra}


# --------------------------------------------------------------------------- distinct paths


def test_equation_dedup_merges_rewordings_and_keeps_gold_first():
    cands = [cand("He has 3 * 4 = 12 apples, then 12 - 2 = 10 are left. Answer: 10"),
             cand("Bags: 3*4=12. After eating: 12-2=10\nAnswer: 10"),  # same equations: same path
             cand("2 apples eaten from 4 * 3 = 12 gives 12 - 2 = 10. Answer: 10"),  # 4*3: another path
             cand("3 + 4 = 7 so 10. Answer: 10", correct=False)]
    kept, stats = select_paths(PROBLEM, cands, GOLD, "equations", cap=4)
    # The gold computes 3*4=12 | 12-2=10 too, so candidates 0 and 1 are copies of it.
    assert [k["response"] for k in kept] == [GOLD, cands[2]["completion"]]
    assert [k["source"] for k in kept] == ["gold", "sample"]
    assert stats == {"problem_id": "q1", "drawn": 4, "correct": 3, "pass_rate": 0.75, "star_drawn": 0,
                     "star_correct": 0, "pooled": 0, "pooled_correct": 0, "distinct": 2, "kept": 2,
                     "dropped_equations": 0, "dropped_hint": 0}


def test_text_and_exact_keys():
    cands = [cand("So 12 - 2 = 10.\nAnswer: 10"), cand("so 12 - 2 =  10.\nanswer: 10"),
             cand("So 12 - 2 = 10.\nAnswer: 10")]
    assert select_paths(PROBLEM, cands, None, "exact", cap=9)[1]["distinct"] == 2  # case/space differ
    assert select_paths(PROBLEM, cands, None, "text", cap=9)[1]["distinct"] == 1
    kept, stats = select_paths(PROBLEM, cands, None, "equations", cap=9)
    assert stats["distinct"] == 1 and [k["response"] for k in kept] == [cands[0]["completion"]]


def test_cap_prefers_the_most_different_paths():
    # Gold key eq:3*4=12|12-2=10; the candidates' keys are at edit distance 1, 2 and 9 from it.
    cands = [cand("3 * 4 = 12, 12 - 2 = 11, 10. Answer: 10"),
             cand("4 * 3 = 12 then 12 - 2 = 10. Answer: 10"),
             cand("3 + 3 + 3 + 3 = 12; 12 - 1 - 1 = 10. Answer: 10")]
    kept, stats = select_paths(PROBLEM, cands, GOLD, "equations", cap=2)
    assert stats["distinct"] == 3 and stats["kept"] == 2
    assert [k["response"] for k in kept] == [GOLD, cands[2]["completion"]]


def test_check_equations_drops_wrong_arithmetic_with_right_answer():
    cands = [cand("3 * 4 = 13 apples, 13 - 2 = 10. Answer: 10"), cand("4 * 3 = 12, 12 - 2 = 10. Answer: 10")]
    kept, stats = select_paths(PROBLEM, cands, None, "equations", cap=4, check_equations=True)
    assert [k["response"] for k in kept] == [cands[1]["completion"]] and stats["dropped_equations"] == 1
    assert select_paths(PROBLEM, cands, None, "equations", cap=4)[1]["kept"] == 2


def test_summary_of_round():
    stats = [{"drawn": 4, "correct": 2, "pass_rate": 0.5, "star_drawn": 0, "star_correct": 0, "pooled": 1,
              "distinct": 2, "kept": 3},
             {"drawn": 4, "correct": 0, "pass_rate": 0.0, "star_drawn": 4, "star_correct": 1, "pooled": 0,
              "distinct": 1, "kept": 2},
             {"drawn": 8, "correct": 0, "pass_rate": 0.0, "star_drawn": 4, "star_correct": 0, "pooled": 0,
              "distinct": 0, "kept": 1}]
    assert summarise(stats) == {"questions": 3, "samples_drawn": 24, "correct": 2, "kept": 6, "solved": 1,
                                "rationalized": 1, "pooled": 1, "distinct_paths_mean": 1.0,
                                "distinct_paths_hist": {"0": 1, "1": 1, "2": 1}, "pass_rate_mean": 0.5 / 3}


# --------------------------------------------------------------------------- DART


def scripted(patterns):
    """Question i's j-th sample is correct when patterns[i](j); records every request made."""
    drawn = [0] * len(patterns)
    log = []

    def sample(requests, call):
        log.append(dict(requests))
        out = {}
        for i, n in requests.items():
            out[i] = [patterns[i](drawn[i] + j) for j in range(n)]
            drawn[i] += n
        return out
    return sample, log


# Question 0 right on even samples, question 1 on every 4th (j = 3, 7, ...), question 2 never.
PATTERNS = [lambda j: j % 2 == 0, lambda j: j % 4 == 3, lambda j: False]


def test_dart_uniform_stops_at_min_correct_or_budget():
    sample, log = scripted(PATTERNS)
    tries, correct, calls = allocate_samples(sample, 3, first=2, allocation="uniform", min_correct=2, budget=8)
    # call 0: 1/2, 0/2, 0/2 -> Q0 needs ceil(1*2/1)=2, Q1/Q2 double their tries (2 each);
    # call 1: Q0 2/4 done, Q1 1/4 -> ceil(1*4/1)=4, Q2 0/4 -> 4; call 2: Q1 2/8 done, Q2 hits the budget.
    assert log == [{0: 2, 1: 2, 2: 2}, {0: 2, 1: 2, 2: 2}, {1: 4, 2: 4}]
    assert (tries, correct, calls) == ([4, 8, 8], [2, 2, 0], 3)


def test_dart_prop2diff_asks_less_of_easy_questions():
    sample, log = scripted(PATTERNS)
    tries, correct, calls = allocate_samples(sample, 3, first=2, allocation="prop2diff", min_correct=2, budget=8)
    # After call 0 the fail rates are 0.5, 1, 1: Q0's target is ceil(2*0.5/1)=1, already met.
    assert log == [{0: 2, 1: 2, 2: 2}, {1: 2, 2: 2}, {1: 4, 2: 4}]
    assert (tries, correct, calls) == ([2, 8, 8], [1, 2, 0], 3)


def test_fixed_allocation_samples_k_once_and_dart_probe_respects_budget():
    sample, log = scripted(PATTERNS)
    assert allocate_samples(sample, 3, first=5, allocation="fixed") == ([5, 5, 5], [3, 1, 0], 1)
    sample, log = scripted(PATTERNS)
    tries, _, _ = allocate_samples(sample, 3, first=10, allocation="uniform", min_correct=1, budget=4)
    assert log[0] == {0: 4, 1: 4, 2: 4} and tries == [4, 4, 4]


# --------------------------------------------------------------------------- STaR


def test_star_rationale_is_trained_without_the_hint():
    hinted = star_hint_prompt(PROBLEM.question, "10")
    cands = [cand("3 * 4 = 12 and 12 - 2 = 10. Answer: 10", source="star", hinted_question=hinted),
             cand("The hint says 10, so the answer is 10. Answer: 10", source="star", hinted_question=hinted),
             cand("I guess 7. Answer: 7", correct=False)]
    kept, stats = select_paths(PROBLEM, cands, None, "equations", cap=4)
    assert [k["source"] for k in kept] == ["star"] and stats["dropped_hint"] == 1
    assert stats["star_drawn"] == 2 and stats["star_correct"] == 2 and stats["pass_rate"] == 0.0
    assert HINT_PREFIX in kept[0]["hinted_question"]
    assert training_question(kept[0], PROBLEM) == PROBLEM.question
    assert training_question({"source": "sample"}, PROBLEM) == PROBLEM.question


# --------------------------------------------------------------------------- bad input


def test_gold_answers_the_verifier_cannot_check():
    numeric = TaskConfig(extract=["last_number"])
    assert gold_is_checkable(Problem("a", "q", "1,000"), numeric)
    assert not gold_is_checkable(Problem("a", "q", "seven"), numeric)  # no number to extract
    assert gold_is_checkable(Problem("a", "q", "seven"), TaskConfig())  # `Answer: seven` is read
    assert not gold_is_checkable(Problem("a", "q", "7\n8"), TaskConfig())
    assert not gold_is_checkable(Problem("a", "q", "  "), TaskConfig())


def test_sample_file_from_another_task_is_refused(tmp_path):
    problems = {"q1": PROBLEM}
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"problem_id": "q1", "completion": "12 - 2 = 10\nAnswer: 10", "gold": "10"}) + "\n"
                    + json.dumps({"problem_id": "q1", "completion": "Answer: 9"}) + "\n")
    rows = read_sample_file(str(good), problems, TaskConfig())
    assert [(r["correct"], r["source"]) for r in rows] == [(True, "pool"), (False, "pool")]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"problem_id": "q1", "completion": "x"}) + "\n"
                     + json.dumps({"problem_id": "gsm8k-train-5", "completion": "y"}) + "\n")
    with pytest.raises(UserError, match=r"other.jsonl: 1 of 2 samples name problems that are not in this "
                                        r"task's training set \(first: 'gsm8k-train-5'\)"):
        read_sample_file(str(other), problems, TaskConfig())
    regold = tmp_path / "regold.jsonl"
    regold.write_text(json.dumps({"problem_id": "q1", "completion": "x", "gold": "72"}) + "\n")
    with pytest.raises(UserError, match=r"regold.jsonl:1: problem 'q1' has gold answer '72' in this file but "
                                        r"'10' in this task"):
        read_sample_file(str(regold), problems, TaskConfig())
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"problem_id": "q1"}) + "\n")
    with pytest.raises(UserError, match=r"broken.jsonl:1: missing field 'completion'"):
        read_sample_file(str(broken), problems, TaskConfig())


def test_settings_checked_before_any_work(tmp_path):
    """Counts below 1 are refused by the recipe schema, before any sampling, naming the field."""
    from reasonloop.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - kind: rft\n    rounds: 0\n")
    with pytest.raises(UserError, match=r"r.yaml:3: stages\[0\].rounds: expected >= 1, got 0"):
        load_recipe(recipe)
    with pytest.raises(UserError, match=r"--set stages.0.budget: stages\[0\].budget: expected >= 1, got 0"):
        load_recipe(recipe, ["stages.0.rounds=1", "stages.0.budget=0"])


# --------------------------------------------------------------------------- tiny model end to end


def toy_task(tmp_path):
    # Golds 7 (easy for the digit model), 3 (hard), and one no number can match under last_number.
    golds = ["7", "7", "3", "3", "seven"]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": f"Pick the digit number {i}.", "answer": g,
                                        "reasoning": f"{i} steps lead to {g}."}) + "\n"
                            for i, g in enumerate(golds)))
    return {"source": "jsonl", "train": str(path), "test": str(path), "extract": ["last_number"],
            "fields": {"id": "id", "reasoning": "reasoning"}}


@pytest.fixture(scope="module")
def digit_dir(tmp_path_factory, tokenizer):
    return digit_model_dir(tokenizer, tmp_path_factory.mktemp("digit") / "model")


@pytest.mark.e2e
def test_rft_end_to_end_rounds_resume_and_pooling(digit_dir, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"problem_id": "t2", "completion": "9 - 6 = 3", "gold": "3"}) + "\n")
    stage = {"kind": "rft", "name": "rft", "k": 4, "allocation": "uniform", "min_correct": 2, "budget": 8,
             "rationalize": True, "rounds": 2, "train_from": "last", "pool_from": [str(pool), str(digit_dir)],
             "decoding": {"temperature": 0.7, "max_new_tokens": 4},
             "train": {"kind": "sft", "max_steps": 2, "batch_tokens": 256, "save_every": 1,
                       "optim": {"lr": 1e-2, "warmup_steps": 0}}}
    recipe = Recipe(model={"path": str(digit_dir)}, task=toy_task(tmp_path), stages=[stage],
                    run={"engine": "torch"})
    run_dir = tmp_path / "run"
    summary = run_pipeline(recipe, run_dir, progress=False)
    res = summary["stages"][0]
    sdir = run_dir / "stages" / "rft"
    assert res["skipped_bad_gold"] == 1 and res["skipped_ids"] == ["t4"] and res["questions"] == 4
    assert len(res["rounds"]) == 2 and res["steps"] == 2 and res["final_loss"] > 0

    # Kept data and statistics on disk; gold first for each question; no hint in any training prompt.
    kept = [json.loads(line) for line in (sdir / "round_0" / "kept.jsonl").read_text().splitlines()]
    stats = {s["problem_id"]: s for s in map(json.loads, (sdir / "round_0" / "stats.jsonl").read_text().splitlines())}
    assert set(stats) == {"t0", "t1", "t2", "t3"}
    assert {k["problem_id"] for k in kept if k["source"] == "gold"} == set(stats)
    assert all("Hint" not in k["prompt"] and k["prompt"].endswith("assistant\n") for k in kept)
    # Pooled: 1 sample from the file for t2, k=4 per question from the pooled model (drawn once).
    assert [stats[p]["pooled"] for p in ("t0", "t1", "t2", "t3")] == [4, 4, 5, 4]
    assert sum(1 for _ in (sdir / "pool" / "1.jsonl").open()) == 16
    for s in stats.values():
        # DART: sampling stopped at 2 correct or at the budget of 8.
        assert s["drawn"] <= 8 and (s["correct"] >= 2 or s["drawn"] == 8)
        assert s["pass_rate"] == s["correct"] / s["drawn"]
    samples = [json.loads(line) for line in (sdir / "round_0" / "samples.jsonl").read_text().splitlines()]
    star = [s for s in samples if s["source"] == "star"]
    assert all(HINT_PREFIX in s["hinted_question"] for s in star)
    assert {s["problem_id"] for s in star} == {pid for pid, s in stats.items()
                                              if s["correct"] == 0 and s["pooled_correct"] == 0}

    # The run store: pass rates (what the curriculum reads), distinct paths, samples of both rounds.
    store = RunStore(run_dir / "store.sqlite")
    rates = store.problem_stats("pass_rate", "rft")
    assert set(rates) == {"t0", "t1", "t2", "t3"} and all(0 <= v <= 1 for v in rates.values())
    assert set(store.problem_stats("distinct_paths", "rft")) == set(rates)
    n_samples = len(store.samples("rft"))
    assert n_samples == len(samples) + 17 + sum(1 for _ in (sdir / "round_1" / "samples.jsonl").open())
    assert [s for s, _ in store.metrics("rft", "loss")] == [1, 2, 3, 4]  # round 1 continues the steps

    # Trained: weights moved; the output loads with plain transformers.
    start = AutoModelForCausalLM.from_pretrained(digit_dir).state_dict()
    out = AutoModelForCausalLM.from_pretrained(sdir / "model").state_dict()
    assert any(not torch.equal(start[k], out[k]) for k in start)

    # Resume: a run killed while saving round 1's model redoes only that save, no sampling or training.
    mtimes = {p: p.stat().st_mtime_ns for p in sdir.glob("*/*.jsonl")}
    shutil.rmtree(sdir / "model")
    (sdir / "round_1" / "train.json").unlink()
    ctx = RunContext(recipe=recipe, run_dir=run_dir, store=store, progress=False, current_model=str(digit_dir))
    again = rft.run(ctx, recipe.stages[0], "rft")
    assert again["kept"] == res["kept"] and again["pass_rate_mean"] == res["pass_rate_mean"]
    assert {p: p.stat().st_mtime_ns for p in sdir.glob("*/*.jsonl")} == mtimes
    assert len(store.samples("rft")) == n_samples and len(store.metrics("rft", "loss")) == 4
    resumed = AutoModelForCausalLM.from_pretrained(sdir / "model").state_dict()
    assert all(torch.equal(out[k], resumed[k]) for k in out)
    store.close()


def test_rft_refuses_pool_file_of_another_task_before_sampling(digit_dir, tmp_path):
    pool = tmp_path / "gsm8k_samples.jsonl"
    pool.write_text(json.dumps({"problem_id": "gsm8k-train-0", "completion": "Answer: 72"}) + "\n")
    recipe = Recipe(model={"path": str(digit_dir)}, task=toy_task(tmp_path),
                    stages=[{"kind": "rft", "name": "rft", "pool_from": [str(pool)]}])
    with pytest.raises(UserError, match=r"gsm8k_samples.jsonl: 1 of 1 samples name problems that are not in"):
        run_pipeline(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "stages" / "rft" / "round_0").exists()


@pytest.mark.e2e
def test_cli_rft(digit_dir, tmp_path):
    from reasonloop.cli import main

    task = tmp_path / "q.jsonl"
    task.write_text("".join(json.dumps({"question": f"Say {i}", "answer": "7"}) + "\n" for i in range(3)))
    rc = main(["rft", "--model", str(digit_dir), "--task", str(task), "--out", str(tmp_path / "run"),
               "--no-progress", "--set", "stages.0.k=3", "--set", "stages.0.decoding.max_new_tokens=3",
               "--set", "stages.0.train.kind=sft", "--set", "stages.0.train.max_steps=1",
               "--set", "run.engine=torch"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (stage,) = summary["stages"]
    assert stage["kind"] == "rft" and stage["status"] == "done" and stage["samples_drawn"] == 9
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "stages" / "rft0" / "model")


@pytest.mark.e2e
def test_rft_samples_from_one_model_and_retrains_the_base_as_in_the_paper(digit_dir, tmp_path):
    """`sample_from: sft` + `train_from: base`: round 0 samples from the SFT output and every round
    fine-tunes the recipe's pre-trained model; round 1 samples from round 0's output."""
    rft = {"kind": "rft", "name": "rft", "k": 2, "rounds": 2, "sample_from": "sft", "train_from": "base",
           "init_from": "sft", "decoding": {"temperature": 0.7, "max_new_tokens": 4},
           "train": {"max_steps": 1, "batch_tokens": 256, "optim": {"lr": 1e-3}}}
    sft = {"kind": "sft", "name": "sft", "max_steps": 1, "batch_tokens": 256, "optim": {"lr": 1e-3}}
    recipe = Recipe(model={"path": str(digit_dir)}, task=toy_task(tmp_path), stages=[sft, rft],
                    run={"engine": "torch"})
    run_dir = tmp_path / "run"
    rounds = run_pipeline(recipe, run_dir, progress=False)["stages"][1]["rounds"]
    # Paths inside the run folder are stored relative to it.
    assert [r["sampled_from"] for r in rounds] == ["stages/sft/model", "stages/rft/round_0/model"]
    assert [r["trained_from"] for r in rounds] == [str(digit_dir)] * 2


def test_full_disk_while_writing_samples_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    import os

    from reasonloop.stages.rft_data import load_jsonl, write_jsonl_atomic

    path = tmp_path / "kept.jsonl"
    write_jsonl_atomic(path, [{"a": 1}])
    real_fdopen = os.fdopen

    def fdopen_on_a_full_disk(fd, *args, **kwargs):
        fh = real_fdopen(fd, *args, **kwargs)

        def write(_text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fh.write = write
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen_on_a_full_disk)
    with pytest.raises(UserError) as err:
        write_jsonl_atomic(path, [{"a": 2}])
    assert str(err.value).startswith(f"{path}: could not write samples (No space left on device); files written "
                                     "before are kept")
    monkeypatch.undo()
    assert load_jsonl(path) == [{"a": 1}] and [p.name for p in tmp_path.iterdir()] == ["kept.jsonl"]


@pytest.mark.e2e
def test_rft_trains_its_kept_paths_in_the_order_of_the_rounds_pass_rates(digit_dir, tmp_path):
    """`train.curriculum` with `difficulty: pass_rate` reads the round's own measurement: questions the
    sampling model solved most often train first, unsolved ones last."""
    from reasonloop.stages.sft_data import curriculum_order, examples_from_pairs
    from reasonloop.tasks import load_task

    stage = {"kind": "rft", "name": "rft", "k": 4, "decoding": {"temperature": 1.0, "max_new_tokens": 4},
             "train": {"max_steps": 1, "batch_tokens": 256, "optim": {"lr": 1e-3},
                       "curriculum": {"scheduler": "static", "difficulty": "pass_rate"}}}
    recipe = Recipe(model={"path": str(digit_dir)}, task=toy_task(tmp_path), stages=[stage], run={"engine": "torch"})
    run_pipeline(recipe, tmp_path / "run", progress=False)
    rdir = tmp_path / "run" / "stages" / "rft" / "round_0"
    stats = [json.loads(line) for line in (rdir / "stats.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (rdir / "kept.jsonl").read_text().splitlines()]
    rate = {s["problem_id"]: s["pass_rate"] for s in stats}
    assert len(set(rate.values())) > 1  # the digit model solves the 7s, not the 3s: something to order by

    from reasonloop.models import load_tokenizer

    tok = load_tokenizer(str(digit_dir))
    examples = examples_from_pairs(tok, [(k["problem_id"], k["prompt"], k["response"]) for k in kept], 512)
    order = curriculum_order(recipe.stages[0].train.curriculum, examples,
                             {p.id: p for p in load_task(recipe.task).train}, rate, 0, "x")(0)
    assert [rate[examples[i].problem_id] for i in order] == sorted((rate[e.problem_id] for e in examples),
                                                                   reverse=True)
