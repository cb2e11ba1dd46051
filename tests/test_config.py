from pathlib import Path

import pytest

from reasonloop.config import Recipe, load_recipe
from reasonloop.errors import UserError

RECIPES = sorted((Path(__file__).parents[1] / "src/reasonloop/recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_example_recipe_validates(path):
    assert isinstance(load_recipe(path), Recipe)


def test_default_recipe_is_packaged():
    assert load_recipe(None).stages


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_misspelled_key_names_file_line_and_field(tmp_path):
    p = write(tmp_path, "model:\n  path: default\n  dtpye: bf16\n")
    with pytest.raises(UserError) as err:
        load_recipe(p)
    assert str(err.value).startswith(f"{p}:3: model.dtpye: unknown setting")


def test_wrong_type_in_stage_names_index(tmp_path):
    p = write(tmp_path, "stages:\n  - kind: eval\n  - kind: sft\n    optim:\n      lr: fast\n")
    with pytest.raises(UserError, match=r"r.yaml:5: stages\[1\].optim.lr: expected float, got 'fast'"):
        load_recipe(p)


def test_unknown_stage_kind(tmp_path):
    p = write(tmp_path, "stages:\n  - kind: dpo\n")
    with pytest.raises(UserError, match=r"stages\[0\]"):
        load_recipe(p)


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "model:\n  path: [unclosed\n")
    with pytest.raises(UserError, match=r"r.yaml:\d+: invalid YAML"):
        load_recipe(p)


def test_missing_file():
    with pytest.raises(UserError, match="nope.yaml: recipe file not found"):
        load_recipe("nope.yaml")


def test_overrides_are_typed_and_point_at_the_flag(tmp_path):
    p = write(tmp_path, "stages:\n  - kind: sft\n")
    r = load_recipe(p, ["stages.0.optim.lr=2e-5", "model.dtype=fp32", "stages.0.max_steps=3"])
    assert r.stages[0].optim.lr == 2e-5 and r.model.dtype == "fp32" and r.stages[0].max_steps == 3
    with pytest.raises(UserError, match=r"^--set stages.0.optim.lr: stages\[0\].optim.lr: expected float"):
        load_recipe(p, ["stages.0.optim.lr=fast"])
    with pytest.raises(UserError, match=r"no list item '3'"):
        load_recipe(p, ["stages.3.k=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe(p, ["stages.0.k"])


def test_every_field_has_a_docstring_or_is_self_evident():
    from reasonloop.config import ModelConfig, TaskConfig

    import reasonloop.config as c

    for model in [m for m in vars(c).values() if isinstance(m, type) and issubclass(m, c.Strict)]:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"


@pytest.mark.parametrize("text, message", [
    # Cross-field checks that used to fire only when their stage started, after the stages before it.
    ("stages:\n  - kind: sft\n  - kind: rl\n    algorithm: rloo\n    group_size: 1\n",
     r"r.yaml:3: stages\[1\]: group_size: rloo compares samples of one prompt, so it needs group_size >= 2"),
    ("stages:\n  - kind: eval\n    k: 4\n    n: 2\n",
     r"r.yaml:2: stages\[0\]: n: pass@4 needs at least k samples per problem; got n=2"),
    ("stages:\n  - kind: rl\n    curriculum:\n      scheduler: sec\n      temperature: 0\n",
     r"r.yaml:5: stages\[0\].curriculum.temperature: must be > 0, got 0"),
    ("stages:\n  - kind: rl\n    curriculum:\n      scheduler: adarft\n      step_size: -0.1\n",
     r"r.yaml:5: stages\[0\].curriculum.step_size: must be >= 0, got -0.1"),
    ("stages:\n  - kind: rl\n    curriculum: {scheduler: sec, buckets: 0}\n",
     r"r.yaml:3: stages\[0\].curriculum.buckets: must be >= 1, got 0"),
    ("stages:\n  - kind: rl\n    curriculum: {scheduler: levels, promote_at: 1.5}\n",
     r"r.yaml:3: stages\[0\].curriculum.promote_at: must lie in \[0, 1\], got 1.5"),
    ("stages:\n  - kind: rl\n    curriculum: {scheduler: levels}\n",
     r"stages\[0\].curriculum.scheduler: 'levels' needs a task with difficulty levels"),
    # An sft stage orders its examples; the schedulers steered by rewards are refused when the recipe loads.
    ("stages:\n  - kind: sft\n    curriculum: {scheduler: adarft}\n",
     r"r.yaml:3: stages\[0\].curriculum.scheduler: 'adarft' steers by rewards, which an sft stage does not "
     r"produce; use one of none, static, anneal here \(rl stages take the others\)$"),
    ("stages:\n  - kind: sft\n    curriculum: {scheduler: easy}\n",
     r"r.yaml:3: stages\[0\].curriculum.scheduler: expected one of none, static, anneal, got 'easy'$"),
    ("stages:\n  - kind: rft\n    train:\n      curriculum: {scheduler: sec}\n",
     r"r.yaml:4: stages\[0\].train.curriculum.scheduler: 'sec' steers by rewards"),
    ("stages:\n  - kind: sft\n    curriculum: {scheduler: static, difficulty: vibes}\n",
     r"r.yaml:3: stages\[0\].curriculum.difficulty: expected 'metadata', 'pass_rate' or 'length', got 'vibes'$"),
    ("stages:\n  - kind: sft\n    curriculum: {scheduler: static, buckets: 4}\n",
     r"r.yaml:3: stages\[0\].curriculum.buckets: unknown setting"),
    ("stages:\n  - kind: sft\nrun:\n  parallel: zero\n", r"r.yaml:4: run.parallel: expected 'ddp' or 'fsdp', got 'zero'$"),
    ("model: {lora: {r: 8}}\nstages:\n  - kind: sft\nrun: {parallel: fsdp}\n",
     r"run.parallel: fsdp shards full fine-tuning, and model.lora trains adapters of a few MB; use run.parallel: "
     r"ddp with LoRA \(or drop model.lora\)$"),
])
def test_cross_field_checks_fail_at_validation(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_recipe(write(tmp_path, text))


def test_a_range_is_checked_only_for_the_scheduler_using_it(tmp_path):
    assert load_recipe(write(tmp_path, "stages:\n  - kind: rl\n    curriculum: {scheduler: static, temperature: 0}\n"))


def test_anchors_and_merge_keys_still_work(tmp_path):
    """The loader that refuses duplicate keys and alias bombs keeps YAML's sharing features."""
    p = write(tmp_path, "stages:\n  - kind: eval\n    decoding: &dec {max_new_tokens: 8, temperature: 0.5}\n"
              "  - kind: rl\n    decoding:\n      <<: *dec\n      temperature: 1.0\n")
    r = load_recipe(p)
    assert r.stages[0].decoding.max_new_tokens == 8 and r.stages[1].decoding.max_new_tokens == 8
    assert r.stages[1].decoding.temperature == 1.0  # a key beside a merge overrides it, not a duplicate
