"""Paired comparison of each eval with the eval before it: from the run store, through the pipeline, into
summary.json, the report and the end-of-run table."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import digit_model_dir
from reasonloop.cli import main
from reasonloop.config import Recipe, load_recipe
from reasonloop.errors import UserError
from reasonloop.runs.compare import paired_with_previous, previous_eval, verdict
from reasonloop.runs.store import RunStore

GOLDS = ["3", "3", "3", "7", "5"]


def digit_model(tokenizer, out, digit: int):
    """A tiny model whose greedy answer to any prompt is `digit`, then end-of-turn (conftest.digit_model_dir)."""
    return str(digit_model_dir(tokenizer, out, favoured=digit))


def toy_task(tmp_path) -> dict:
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": f"Pick digit number {i}.", "answer": g}) + "\n"
                            for i, g in enumerate(GOLDS)))
    return {"source": "jsonl", "train": str(path), "test": str(path), "extract": ["last_number"],
            "fields": {"id": "id"}}


def recipe_with_evals(tmp_path, *evals: dict) -> Recipe:
    return Recipe(model={"path": "tiny-random"}, task=toy_task(tmp_path),
                  stages=[{"kind": "eval", **e} for e in evals])


def greedy_records(store, stage) -> dict[str, bool]:
    """Per-problem greedy correctness as the samples table holds it (independent of the problem stats)."""
    return {r["problem_id"]: bool(r["correct"]) for r in store.samples(stage)
            if json.loads(r["meta"])["decoding"] == "greedy"}


@pytest.mark.e2e
def test_two_evals_end_to_end_summary_report_and_table(tmp_path, tokenizer, capsys):
    sevens, threes = digit_model(tokenizer, tmp_path / "m7", 7), digit_model(tokenizer, tmp_path / "m3", 3)
    evals = [{"name": "first", "init_from": sevens, "k": 0, "decoding": {"max_new_tokens": 4}},
             {"name": "second", "init_from": threes, "k": 4, "decoding": {"temperature": 0.7, "max_new_tokens": 4}},
             {"name": "third", "init_from": sevens, "limit": 3, "k": 2, "decoding": {"max_new_tokens": 4}}]
    recipe = {"model": {"path": sevens, "dtype": "fp32"}, "task": toy_task(tmp_path),
              "stages": [{"kind": "eval", **e} for e in evals], "run": {"engine": "torch"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, second, third = (s["eval"] for s in summary["stages"])
    assert "paired" not in first and "paired_skipped" not in first  # nothing before it

    # second (answers 3) vs first (answers 7) on golds 3 3 3 7 5: won t0-t2, lost t3.
    pr = second["paired"]
    assert set(pr) >= {"vs", "n", "delta", "delta_ci95", "p_value", "wins", "losses"}
    assert (pr["vs"], pr["n"], pr["wins"], pr["losses"]) == ("first", 5, 3, 1) and "note" not in pr
    assert pr["delta"] == pytest.approx(0.4) and pr["p_value"] == pytest.approx(2 * (1 + 4) / 16)
    assert pr["delta_ci95"][0] < 0.4 < pr["delta_ci95"][1]
    store = RunStore(tmp_path / "run" / "store.sqlite")
    before, after = greedy_records(store, "first"), greedy_records(store, "second")
    assert pr["wins"] == sum(after[p] and not before[p] for p in after)
    assert pr["losses"] == sum(before[p] and not after[p] for p in after)

    # Sampled accuracy: the share of right answers among all 4 x 5 samples of `second`, beside greedy top-1.
    sampled = [bool(r["correct"]) for r in store.samples("second") if json.loads(r["meta"])["decoding"] != "greedy"]
    assert len(sampled) == 20 and second["sampled_acc"] == pytest.approx(sum(sampled) / 20)
    assert second["sampled_acc_ci95"][0] <= second["sampled_acc"] <= second["sampled_acc_ci95"][1]
    assert second["sampling"]["temperature"] == 0.7 and "sampled_delta" not in pr  # `first` drew no samples

    # third (answers 7) saw only t0-t2: paired on those 3 with `second`, all three lost; both sampled.
    pr3 = third["paired"]
    assert (pr3["vs"], pr3["n"], pr3["wins"], pr3["losses"], pr3["p_value"]) == ("second", 3, 0, 3, 0.25)
    assert pr3["note"] == "paired on the 3 problems both evaluated (3 here, 5 in 'second')"
    assert pr3["sampled_n"] == 3 and pr3["sampled_delta"] < 0
    store.close()

    html = (tmp_path / "run" / "report.html").read_text()
    assert "+0.400 [" in html and "3 / 1" in html and "<b>raises</b> accuracy (or <b>lowers</b> it) when p &lt; 0.05" in html
    assert f"Δ {pr3['sampled_delta']:+.3f}" in html  # third's sampled accuracy against second's
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("second"))
    assert "+0.400 [" in row and "3/1" in row and "0.62" in row and "no clear change" in row
    assert "a stage raises accuracy when p < 0.05" in table


def test_pairs_on_common_problems_and_skips_with_a_reason(tmp_path):
    recipe = recipe_with_evals(tmp_path, {"name": "a"}, {"name": "b"}, {"name": "c"})
    store = RunStore(tmp_path / "s.sqlite")
    store.set_problem_stats("a", "greedy_correct", {"p1": 1.0, "p2": 0.0})
    store.set_problem_stats("b", "greedy_correct", {"p3": 1.0})
    store.set_problem_stats("c", "greedy_correct", {"p1": 0.0, "p2": 1.0, "p3": 1.0})
    assert paired_with_previous(store, recipe, "a") == {}
    assert paired_with_previous(store, recipe, "b") == {
        "paired_skipped": "no problem in common with eval 'a' (1 problems here, 2 there): nothing to pair"}
    assert paired_with_previous(store, recipe, "c")["paired"]["n"] == 1  # c vs b, on p3 only


def test_sampled_delta_is_the_mean_paired_difference_of_pass_rates(tmp_path):
    recipe = recipe_with_evals(tmp_path, {"name": "a"}, {"name": "b"})
    store = RunStore(tmp_path / "s.sqlite")
    for stage in ("a", "b"):
        store.set_problem_stats(stage, "greedy_correct", {"p1": 0.0, "p2": 0.0, "p3": 1.0})
    store.set_problem_stats("a", "pass_rate", {"p1": 0.0, "p2": 0.25, "p3": 0.5})
    store.set_problem_stats("b", "pass_rate", {"p1": 0.5, "p2": 0.5, "p3": 1.0})
    pr = paired_with_previous(store, recipe, "b")["paired"]
    # differences 0.5, 0.25, 0.5: mean 0.41667, sd 0.14434, t(2) = 4.303, half 4.303 * 0.14434 / sqrt(3) = 0.35857
    assert pr["sampled_delta"] == pytest.approx(0.41667, abs=1e-5)
    assert pr["sampled_delta_ci95"] == [pytest.approx(0.0581, abs=1e-4), pytest.approx(0.77524, abs=1e-4)]
    assert (pr["wins"], pr["losses"], pr["delta"]) == (0, 0, 0.0)


def test_verdict_reads_the_p_value():
    assert verdict({"p_value": 0.0215, "wins": 9, "losses": 1}) == "raises"
    assert verdict({"p_value": 0.0215, "wins": 1, "losses": 9}) == "lowers"
    assert verdict({"p_value": 0.05, "wins": 9, "losses": 2}) == "no clear change"


def test_default_recipe_pairs_every_eval_after_the_first():
    recipe = load_recipe(None)
    evals = [name for name, s in zip(recipe.stage_names(), recipe.stages) if s.kind == "eval"]
    assert [previous_eval(recipe, name) for name in evals] == [None, *evals[:-1]]
    assert len({s.limit for s in recipe.stages if s.kind == "eval"}) == 1  # the same 500 problems each time


def test_compare_to_pairs_an_arm_with_the_eval_of_its_start():
    recipe = load_recipe(None, ["stages.6.compare_to=eval_sft"])
    assert previous_eval(recipe, "eval_rl") == "eval_sft" and previous_eval(recipe, "eval_rft") == "eval_sft"
    with pytest.raises(UserError, match=r"stages\[2\].compare_to: 'eval_rl' is not an eval stage before this one"):
        load_recipe(None, ["stages.2.compare_to=eval_rl"])
