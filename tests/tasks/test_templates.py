"""Question templates over several record fields (`task.fields.question: "{Body} {Question}"`), on the
JSONL, Parquet and HF sources, with one-line errors naming the row."""

import json
import sys
import types

import pytest

from reasonloop.config import TaskConfig, load_recipe
from reasonloop.errors import UserError
from reasonloop.tasks import load_task
from reasonloop.tasks.template import render, template_fields, template_parts

SVAMP = [
    {"ID": "chal-1", "Body": "Jack had 8 pens.", "Question": "He gave away 3. How many are left?", "Answer": 5.0},
    {"ID": "chal-2", "Body": "A box holds 4 eggs.", "Question": "How many eggs in 2 boxes?", "Answer": 8.0},
]
SVAMP_FIELDS = {"question": "{Body} {Question}", "answer": "Answer", "id": "ID"}


def svamp_file(tmp_path, rows=SVAMP):
    f = tmp_path / "svamp.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_template_parts_and_fields():
    assert template_fields("{Body} {Question}") == ["Body", "Question"]
    assert template_fields("Q: {Question}\n{{hint}} {Question}") == ["Question"]  # {{ }} are literal
    assert render("{Body} {Question} {{x}}", {"Body": "B.", "Question": "Q?"}, "f:1", "question") == "B. Q? {x}"
    assert render("n={n}", {"n": 5.0}, "f:1", "question") == "n=5.0"
    for bad, why in (("{Body", "malformed template"), ("{}", "empty placeholder"),
                     ("{rec.attr}", "plain field names"), ("{a[0]}", "plain field names"),
                     ("{a!r}", "plain field names"), ("{a:>5}", "plain field names")):
        with pytest.raises(ValueError, match=why):
            template_parts(bad)


def test_svamp_jsonl_question_spans_body_and_question(tmp_path):
    f = svamp_file(tmp_path)
    data = load_task(TaskConfig(source="jsonl", train=str(f), test=str(f), fields=SVAMP_FIELDS))
    p = data.train[0]
    assert p.question == "Jack had 8 pens. He gave away 3. How many are left?"
    assert p.answer == "5.0" and p.id == "chal-1" and p.meta["record"]["Body"] == "Jack had 8 pens."
    assert [q.id for q in data.test] == ["chal-1", "chal-2"]


def test_plain_field_name_still_works_and_equals_one_placeholder(tmp_path):
    f = svamp_file(tmp_path)
    plain = load_task(TaskConfig(source="jsonl", train=str(f), test=str(f),
                                 fields={"question": "Question", "answer": "Answer"}))
    braced = load_task(TaskConfig(source="jsonl", train=str(f), test=str(f),
                                  fields={"question": "{Question}", "answer": "Answer"}))
    assert [p.question for p in plain.train] == [p.question for p in braced.train] == [r["Question"] for r in SVAMP]


def test_unknown_template_field_names_file_and_line(tmp_path):
    f = svamp_file(tmp_path)
    cfg = TaskConfig(source="jsonl", train=str(f), test=str(f), fields={**SVAMP_FIELDS, "question": "{Bdy} {Question}"})
    with pytest.raises(UserError, match=r"svamp.jsonl:1: task.fields.question: template '\{Bdy\} \{Question\}' "
                                        r"names field 'Bdy', which this record lacks \(its fields: ID, Body, "):
        load_task(cfg)
    rows = [SVAMP[0], {k: v for k, v in SVAMP[1].items() if k != "Body"}, SVAMP[0]]
    f = svamp_file(tmp_path, rows)
    with pytest.raises(UserError, match=r"svamp.jsonl:2: task.fields.question: .* names field 'Body'") as err:
        load_task(TaskConfig(source="jsonl", train=str(f), test=str(f), fields=SVAMP_FIELDS))
    assert "\n" not in str(err.value)
    f = svamp_file(tmp_path, [{**SVAMP[0], "Body": None}])
    with pytest.raises(UserError, match=r"svamp.jsonl:1: task.fields.question: .*field 'Body' is null here"):
        load_task(TaskConfig(source="jsonl", train=str(f), test=str(f), fields=SVAMP_FIELDS))


def test_bad_templates_fail_when_the_recipe_loads(tmp_path):
    recipe = tmp_path / "r.yaml"
    for fields, why in (('{question: "{Body"}', r"task.fields: question: malformed template"),
                        ('{question: {Body}}', r"task.fields: question: quote a template in YAML"),
                        ('{difficulty: "{lvl}"}', r"task.fields: difficulty: must name one field")):
        recipe.write_text(f"task:\n  source: jsonl\n  fields: {fields}\nstages: [{{kind: eval}}]\n")
        with pytest.raises(UserError, match=why) as err:
            load_recipe(recipe)
        assert "\n" not in str(err.value), str(err.value)


def fake_module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_parquet_source_fills_templates(tmp_path, monkeypatch):
    """Through the Parquet reader, with pyarrow stood in for (it is an optional dependency)."""
    table = types.SimpleNamespace(to_pylist=lambda: [dict(r) for r in SVAMP])
    pq = fake_module(monkeypatch, "pyarrow.parquet", read_table=lambda path: table)
    fake_module(monkeypatch, "pyarrow", parquet=pq)
    f = tmp_path / "svamp.parquet"
    f.write_bytes(b"PAR1")
    data = load_task(TaskConfig(source="parquet", train=str(f), test=str(f), fields=SVAMP_FIELDS))
    assert data.test[1].question == "A box holds 4 eggs. How many eggs in 2 boxes?"
    table.to_pylist = lambda: [{"Question": "q", "Answer": 1}]
    with pytest.raises(UserError, match=r"svamp.parquet:row 0: task.fields.question: .*names field 'Body'"):
        load_task(TaskConfig(source="parquet", train=str(f), test=str(f), fields=SVAMP_FIELDS))


def test_hf_source_fills_templates(monkeypatch):
    """Through the HF reader, with `datasets` stood in for (no network, optional dependency)."""
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [dict(r) for r in SVAMP] if split == "test" else [{"Body": "b", "Answer": 1}]

    fake_module(monkeypatch, "datasets", load_dataset=load_dataset)
    cfg = TaskConfig(source="hf", train="ChilleD/SVAMP:train", test="ChilleD/SVAMP:test", fields=SVAMP_FIELDS)
    with pytest.raises(UserError, match=r"ChilleD/SVAMP:train:row 0: task.fields.question: .*names field 'Question'"):
        load_task(cfg)
    monkeypatch.setitem(sys.modules["datasets"].__dict__, "load_dataset",
                        lambda name, config, split: [dict(r) for r in SVAMP])
    data = load_task(cfg)
    assert calls[0] == ("ChilleD/SVAMP", None, "train")
    assert data.train[0].question == "Jack had 8 pens. He gave away 3. How many are left?"


def test_record_columns_reach_trl_style_rewards(tmp_path):
    from reasonloop.verify.rewards import TrlReward

    f = svamp_file(tmp_path)
    problems = load_task(TaskConfig(source="jsonl", train=str(f), test=str(f), fields=SVAMP_FIELDS)).test
    seen = {}

    def trl_reward(completions, Body, Answer, **kwargs):
        seen.update(Body=Body, Answer=Answer, prompts=kwargs["prompts"])
        return [0.0] * len(completions)

    TrlReward(trl_reward)(["Answer: 5", "Answer: 9"], problems)
    assert seen["Body"] == [r["Body"] for r in SVAMP] and seen["Answer"] == [5.0, 8.0]
    assert seen["prompts"][0] == "Jack had 8 pens. He gave away 3. How many are left?"
