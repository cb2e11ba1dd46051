"""Every packaged recipe runs end to end on a tiny model (issue #24).

Validation (tests/test_config.py) cannot see a recipe whose stages fail when they run, or a setting that
only breaks in combination with another. Here each recipe under `recipes/` runs whole, shrunk by
command-line style overrides only (`--set stages.3.limit=4`): fewer problems, steps, samples and tokens,
and `model.path` pointed at the tiny model. Every other setting stays as written, so each stage kind and
each setting the recipe uses executes (PPO with a value head and the KL in the reward, RFT with k and
dedup, curricula, ablation arms, ...). The shrink is computed from the recipe's stages by field name, so
a recipe added to the folder later is picked up and shrunk with no edit here.

The model is the conftest's digit model (a 2-layer, 64-wide Llama that answers with one digit, mostly its
favoured one): random weights would score 0 everywhere, leaving every GRPO group flat and its update
skipped; with some answers right, groups split and the updates, curricula and RFT filters see real
signal. GSM8K recipes read the data beside the checkout (../shared/data/gsm8k, as the gsm8k source finds
it) and are skipped where it is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import digit_model_dir
from reasonloop.config import Decoding, StageBase, load_recipe
from reasonloop.errors import UserError
from reasonloop.pipeline import run_pipeline, stage_output

RECIPES = sorted((Path(__file__).resolve().parents[1] / "src/reasonloop/recipes").glob("*.yaml"))

# Problems a stage uses, by kind (any other kind: DEFAULT_LIMIT). SFT gets a few more so a packed
# micro-batch holds several examples; RFT enough that a few sampled answers are right and reach the
# dedup and keep steps beside the gold solutions. RL keeps its pool as written (None): its cost is per
# step, not per pool problem, and a curriculum needs problems to choose among.
LIMITS = {"eval": 4, "sft": 8, "rft": 16, "rl": None}
DEFAULT_LIMIT = 4
# Each setting that sizes the work, and its shrunk value (`None` in a recipe means "all": shrunk too).
SHRINK = {
    "eval_limit": lambda v: min(v, 4),
    "k": lambda v: min(v, 2) if v else v,  # 0 means greedy only: kept, it is a different path
    "seeds": lambda v: min(v, 2),  # >1 keeps the mean-over-seeds path
    "steps": lambda v: min(v, 4),  # enough that the GRPO steps of the recipes see a split group
    "max_steps": lambda v: v if v is None else min(v, 4),
    "prompts_per_step": lambda v: min(v, 32),  # cheap (2-token answers); more groups that split
    "batch_size": lambda v: v if v is None else min(v, 8),  # rl: None decodes a whole step at once
    "budget": lambda v: min(v, 4),  # DART's samples per question
    "rounds": lambda v: min(v, 2),  # >1 keeps Expert Iteration's later rounds
    "eval_every": lambda v: min(v, 1),  # 0 stays off; otherwise the learning curve runs every step
}
MAX_NEW_TOKENS = 8
# Settings that name a model: where they name the recipe's own starting model they follow `model.path` to
# the tiny one (ddp-smoke's KL `reference: tiny-random` must share the policy's vocabulary).
MODEL_REFS = ("init_from", "reference", "sample_from", "pool_from")


def _section_overrides(section: BaseModel, prefix: str, kind: str, start_model: str, tiny: str) -> list[str]:
    """`prefix.field=value` for each field of one stage section (or a section nested in it) to shrink."""
    out = []
    for field in type(section).model_fields:
        value = getattr(section, field)
        key = f"{prefix}.{field}"
        if field == "limit":
            cap = LIMITS.get(kind, DEFAULT_LIMIT)
            new = value if cap is None else min(value or math.inf, cap)
        elif field == "n" and value is not None:  # pass@k's draws: still more than k, as written
            new = min(value, SHRINK["k"](section.k) + 1)
        elif field in SHRINK:
            new = SHRINK[field](value)
        elif field in MODEL_REFS:
            new = [tiny if v == start_model else v for v in value] if isinstance(value, list) else \
                tiny if value == start_model else value
        elif isinstance(value, Decoding):
            new, key = min(value.max_new_tokens, MAX_NEW_TOKENS), f"{key}.max_new_tokens"
            value = value.max_new_tokens
        elif isinstance(value, StageBase):  # e.g. RFT's `train:` SFT section
            out += _section_overrides(value, key, value.kind, start_model, tiny)
            continue
        else:
            continue
        if new != value:
            out.append(f"{key}={json.dumps(new)}")
    return out


def shrink_overrides(recipe, tiny_model: str) -> list[str]:
    """Overrides that run `recipe` in seconds on `tiny_model`, changing only sizes and the model path."""
    out = [f"model.path={tiny_model}"]
    for i, stage in enumerate(recipe.stages):
        out += _section_overrides(stage, f"stages.{i}", stage.kind, recipe.model.path, tiny_model)
    return out


def test_shrink_touches_sizes_and_the_model_only(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "model: {path: base-model}\nstages:\n"
        "  - {kind: eval, k: 0}\n"
        "  - {kind: eval, limit: 2, k: 16, n: 32, seeds: 3, decoding: {max_new_tokens: 300, temperature: 0.3}}\n"
        "  - {kind: rft, k: 100, sample_from: base-model, pool_from: [base-model, x.jsonl],\n"
        "     train: {max_steps: 50, optim: {lr: 0.1}}}\n"
        "  - {kind: rl, algorithm: ppo, group_size: 1, steps: 3000, reference: base-model, eval_every: 0}\n")
    got = shrink_overrides(load_recipe(recipe_file), "/tiny")
    assert got == [
        "model.path=/tiny",
        "stages.0.limit=4", "stages.0.decoding.max_new_tokens=8", "stages.0.batch_size=8",
        "stages.1.k=2", "stages.1.n=3", "stages.1.seeds=2", "stages.1.decoding.max_new_tokens=8",
        "stages.1.batch_size=8",
        "stages.2.k=2", "stages.2.decoding.max_new_tokens=8", "stages.2.budget=4",
        'stages.2.pool_from=["/tiny", "x.jsonl"]', 'stages.2.sample_from="/tiny"', "stages.2.limit=16",
        "stages.2.train.max_steps=4", "stages.2.train.limit=8", "stages.2.train.eval_limit=4",
        "stages.2.batch_size=8",
        "stages.3.steps=4", "stages.3.decoding.max_new_tokens=8", 'stages.3.reference="/tiny"',
        "stages.3.eval_limit=4",
    ]  # temperature, lr, eval_every 0, k 0, group_size 1: as written


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _run_relative_paths(result: dict) -> list[str]:
    """The paths a stage's result names inside the run folder (stored as `stages/<name>/...`)."""
    return [v for v in result.values() if isinstance(v, str) and v.startswith("stages/")]


@pytest.fixture(scope="module")
def answer_model_dir(tmp_path_factory, tokenizer):
    # Favours 0, the commonest answer of the arithmetic recipes (3-6% of their problems).
    return digit_model_dir(tokenizer, tmp_path_factory.mktemp("digit") / "model", favoured=0)


@pytest.mark.e2e  # ~30 s for all recipes at OMP_NUM_THREADS=1; the shrink's own test above stays in the inner loop
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_end_to_end_shrunk(path, tmp_path, answer_model_dir):
    from transformers import AutoModelForCausalLM

    from reasonloop.runs.store import RunStore

    written = load_recipe(path)
    if written.task.source == "gsm8k":
        from reasonloop.tasks import default_gsm8k_path

        try:
            default_gsm8k_path("train"), default_gsm8k_path("test")
        except UserError as err:
            pytest.skip(str(err))
    recipe = load_recipe(path, shrink_overrides(written, str(answer_model_dir)))
    run_dir = tmp_path / "run"
    summary = run_pipeline(recipe, run_dir, progress=False)

    names = recipe.stage_names()
    assert [s["name"] for s in summary["stages"]] == names
    assert json.loads((run_dir / "summary.json").read_text())["stages"] == summary["stages"]
    store = RunStore(run_dir / "store.sqlite")
    rows = {row["name"]: row for row in store.stages()}
    for stage, name in zip(recipe.stages, names):
        row = rows[name]
        assert row["status"] == "done", name
        result = row["result"] or {}
        for rel in _run_relative_paths(result):
            assert (run_dir / rel).exists(), f"{name}: {rel} missing"
        if stage.kind == "eval":
            assert 0.0 <= result["top1"] <= 1.0 and result["n"] >= 1 and store.samples(name, limit=1), name
        losses = [loss for _, loss in store.metrics(name, "loss")]
        assert all(_finite(loss) for loss in losses), f"{name}: losses {losses}"
        if result.get("model"):
            # A trained model reports its last step's loss. Only a step with nothing to learn from has none:
            # GRPO's groups all flat (the tiny model solved none or all of them) and the update skipped.
            skipped_last = store.metrics(name, "skipped_update")[-1:] == [(result.get("steps"), 1.0)]
            assert _finite(result.get("final_loss")) or skipped_last, f"{name}: final_loss {result}"
            AutoModelForCausalLM.from_pretrained(stage_output(run_dir, result["model"]))  # loads without reasonloop
    arms = recipe.run.ablation
    for arm in arms:
        assert _finite(summary["ablation"][arm]["top1"]), arm
    for arm in arms[1:]:  # each later arm paired with the first on the same problems, Holm-adjusted
        vs = summary["ablation"][arm]["vs_first"]
        assert vs["vs"] == arms[0] and vs["n"] >= 1 and vs["p_value"] <= vs["p_holm"] <= 1, (arm, vs)
    assert (run_dir / "report.html").is_file()
    store.close()
