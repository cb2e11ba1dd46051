"""`reasonloop compare RUN_A RUN_B`: one eval of each run, paired problem by problem; refused when the two
evals did not see the same problems."""

from __future__ import annotations

import json

import pytest

from conftest import digit_model_dir
from reasonloop.cli import main
from reasonloop.runs.compare_runs import compare_evals, format_table, read_eval
from reasonloop.runs.store import RunStore


def make_run(run_dir, right: list[bool], tokens: list[int], stage="eval", golds=None, pass_rate=None,
             ids=None) -> str:
    """A run folder with one finished eval, written through the store API as the eval stage writes it."""
    ids = ids or [f"p{i}" for i in range(len(right))]
    golds = golds or ["1"] * len(right)
    store = RunStore(run_dir / "store.sqlite")
    store.start_stage("sft", "sft", 0)
    store.finish_stage("sft", {})
    store.start_stage(stage, "eval", 1)
    store.add_samples(stage, 0, [{"problem_id": p, "completion": "x", "gold": g, "correct": ok, "tokens": t,
                                  "meta": {"decoding": "greedy"}} for p, ok, t, g in zip(ids, right, tokens, golds)])
    store.set_problem_stats(stage, "greedy_correct", {p: float(ok) for p, ok in zip(ids, right)})
    if pass_rate is not None:
        store.set_problem_stats(stage, "pass_rate", dict(zip(ids, pass_rate)))
    store.finish_stage(stage, {"top1": sum(right) / len(right)})
    store.close()
    return str(run_dir)


def test_compare_numbers_by_hand(tmp_path):
    # A right on p0-p2; B right on all 10: 7 wins, 0 losses; McNemar p = 2 / 2^7.
    a = make_run(tmp_path / "a", [True] * 3 + [False] * 7, [10] * 10)
    b = make_run(tmp_path / "b", [True] * 10, [20] * 5 + [30] * 5, pass_rate=[0.5] * 10)
    result = compare_evals(read_eval(a), read_eval(b))
    assert (result["top1_a"], result["top1_b"], result["n"]) == (0.3, 1.0, 10)
    p = result["paired"]
    assert (p["wins"], p["losses"]) == (7, 0) and p["delta"] == pytest.approx(0.7)
    assert p["p_value"] == pytest.approx(2 / 128) and p["delta_ci95"][0] < 0.7 < p["delta_ci95"][1]
    assert (result["mean_tokens_a"], result["mean_tokens_b"]) == (10.0, 25.0)
    assert result["sampled_a"] is None and result["sampled_b"] == 0.5 and result["verdict"] == "raises"
    text = format_table(result)
    assert "greedy top-1 [95% CI]" in text and "0.300 [" in text and "1.000 [" in text
    assert "+0.700 [" in text and "McNemar p = 0.0156 (B is better at p < 0.05)" in text
    assert "wins / losses: 7 / 0" in text and "10.0" in text and "25.0" in text


def test_cli_prints_table_and_writes_page(tmp_path, capsys):
    a = make_run(tmp_path / "a", [True, False, True, False], [5, 6, 7, 8], pass_rate=[1, 0, 0.5, 0.5])
    b = make_run(tmp_path / "b", [True, True, False, False], [4, 4, 4, 4], pass_rate=[1, 1, 0, 0.5])
    page = tmp_path / "cmp.html"
    assert main(["compare", a, b, "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "wins / losses: 1 / 1" in out and "no clear change" in out and f"html: {page}" in out
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 1 and "0.500 [" in html and "wins / losses: 1 / 1" in html
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained


def test_refuses_evals_of_different_problems(tmp_path, capsys):
    a = make_run(tmp_path / "a", [True, False, True], [1, 1, 1])
    b = make_run(tmp_path / "b", [True, False], [1, 1])
    assert main(["compare", a, b, "--html", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not see the same problems (3 and 2; 1 only in A, 0 only in B, e.g. 'p2')" in err
    assert not (tmp_path / "x.html").exists()
    c = make_run(tmp_path / "c", [True, False, True], [1, 1, 1], golds=["1", "2", "1"])
    assert main(["compare", a, c]) == 2
    assert "different gold answers for 1 problems (e.g. 'p1': '1' vs '2')" in capsys.readouterr().err


def test_stage_choice_and_its_errors(tmp_path, capsys):
    a = make_run(tmp_path / "a", [True], [1], stage="eval_sft")
    assert read_eval(a).stage == "eval_sft" and read_eval(a, "eval_sft").stage == "eval_sft"
    assert main(["compare", a, a, "--stage", "nope"]) == 2
    assert "no stage 'nope' (finished evals: eval_sft)" in capsys.readouterr().err
    assert main(["compare", a, a, "--stage", "sft"]) == 2
    assert "stage 'sft' is a done sft stage, not a finished eval" in capsys.readouterr().err
    assert main(["compare", a, str(tmp_path / "missing")]) == 2
    assert "not a run folder (no store.sqlite)" in capsys.readouterr().err


@pytest.mark.e2e
def test_compare_two_real_runs_of_the_tiny_model(tmp_path, tokenizer, capsys):
    """Two `reasonloop eval` run folders of tiny models that answer 7 and 3; then a third on fewer problems."""
    golds = ["3", "3", "3", "7", "5"]
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"question": f"Pick digit number {i}.", "answer": g}) + "\n"
                            for i, g in enumerate(golds)))
    runs = {}
    for name, digit, extra in (("sevens", 7, []), ("threes", 3, []), ("short", 3, ["--limit", "3"])):
        model = digit_model_dir(tokenizer, tmp_path / f"m{digit}", favoured=digit)
        runs[name] = str(tmp_path / name)
        assert main(["eval", "--model", str(model), "--task", str(task), "--k", "0", "--out", runs[name],
                     "--no-progress", "--set", "task.extract=[last_number]",
                     "--set", "stages.0.decoding.max_new_tokens=4", *extra]) == 0
    capsys.readouterr()
    page = tmp_path / "c.html"
    assert main(["compare", runs["sevens"], runs["threes"], "--html", str(page)]) == 0
    out = capsys.readouterr().out
    # threes win t0-t2, lose t3: delta +0.4, p = 2 * (1 + 4) / 16
    assert "0.200 [" in out and "0.600 [" in out and "+0.400 [" in out and "McNemar p = 0.625" in out
    assert "wins / losses: 3 / 1" in out and page.read_text().count("data:image/png;base64,") == 1
    assert main(["compare", runs["threes"], runs["short"]]) == 2
    assert "did not see the same problems (5 and 3; 2 only in A" in capsys.readouterr().err
