"""Bad input on the command line: one clear line on stderr, exit status 2, no traceback."""

import json

import pytest

from reasonloop.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_validate_misspelled_key(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("stages:\n  - kind: eval\n    limt: 5\n")
    code, err = run(capsys, "validate", str(r))
    assert code == 2 and err == [f"error: {r}:3: stages[0].limt: unknown setting (check the spelling; see "
                                 "`reasonloop validate --help` for the schema)"]


def test_validate_ok(capsys):
    assert main(["validate", "default"]) == 0


def test_missing_recipe(capsys):
    code, err = run(capsys, "run", "no/such/recipe.yaml")
    assert code == 2 and err[-1] == "error: no/such/recipe.yaml: recipe file not found"


def test_unknown_task(tmp_path, capsys):
    code, err = run(capsys, "eval", "--task", "mathqa", "--out", str(tmp_path / "o"))
    assert code == 2 and "--task mathqa: unknown task" in err[-1]


def test_path_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    code, err = run(capsys, "eval", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--limit", "2")
    assert code == 2 and err[-1].startswith(f"error: {tmp_path / 'm'}: not a model folder (no config.json)")


def test_k_larger_than_samples(tmp_path, capsys, tiny_model_dir):
    code, err = run(capsys, "eval", "--model", str(tiny_model_dir), "--k", "4", "--n", "2", "--limit", "2",
                    "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2 and "n: pass@4 needs at least k samples per problem; got n=2" in err[-1]


def test_malformed_jsonl_task(tmp_path, capsys, tiny_model_dir):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n{oops\n")
    code, err = run(capsys, "eval", "--model", str(tiny_model_dir), "--task", str(f), "--out", str(tmp_path / "o"))
    assert code == 2 and err[-1].startswith(f"error: {f}:2: malformed JSON")


def test_one_set_takes_several_overrides(capsys):
    code, err = run(capsys, "validate", "default", "--set", "stages.0.limit=7", "stages.0.batch_size=3", "--set",
                    "stages.0.k=many")
    assert code == 2 and err[-1] == "error: --set stages.0.k: stages[0].k: expected integer, got 'many'"
    code, err = run(capsys, "validate", "default", "--set", "stages.0.limit=7", "stages.0.k=x")
    assert code == 2 and err[-1] == "error: --set stages.0.k: stages[0].k: expected integer, got 'x'"


def test_bad_override(capsys):
    code, err = run(capsys, "validate", "default", "--set", "stages.0.k=many")
    assert code == 2 and err[-1] == "error: --set stages.0.k: stages[0].k: expected integer, got 'many'"


@pytest.mark.e2e
def test_eval_on_tiny_model_writes_run_folder(tmp_path, capsys, tiny_model_dir):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    out = tmp_path / "o"
    code = main(["eval", "--model", str(tiny_model_dir), "--task", str(f), "--k", "2", "--seeds", "2",
                 "--out", str(out), "--no-progress", "--set", "stages.0.decoding.max_new_tokens=6"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["stages"][0]["eval"]
    assert ev["n"] == 4 and ev["k"] == 2 and ev["seeds"] == 2 and len(ev["pass_k_ci95"]) == 2
    assert (out / "store.sqlite").is_file() and (out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "top-1" in printed and "maj@k" in printed


def test_end_of_run_table_keeps_long_stage_names_and_kinds_apart(capsys):
    from reasonloop.cli import _print_table

    _print_table({"stages": [{"name": "a_long_verifier_stage", "kind": "verifier", "seconds": 3.0}]})
    header, row = capsys.readouterr().out.strip().splitlines()[:2]
    assert row.split()[:2] == ["a_long_verifier_stage", "verifier"]
    assert header.index("kind") == row.index(" verifier ") + 1  # the kind sits under its header
