"""A new stage kind is a config model and a run function: registering one makes recipes, the command line,
error messages and the pipeline know it, with no other file touched."""

from typing import Literal

import pytest
import yaml
from pydantic import Field

from reasonloop import stage_registry
from reasonloop.config import load_recipe
from reasonloop.errors import UserError
from reasonloop.pipeline import run_pipeline
from reasonloop.stage_config import StageBase


class ScaleStage(StageBase):
    """A toy stage: multiply every weight of the model by `factor` and save it."""

    kind: Literal["scale"]
    factor: float = Field(1.0, gt=0)
    """What every weight is multiplied by."""


def run_scale(ctx, cfg: ScaleStage, name: str) -> dict:
    import torch

    from reasonloop.models import load_model, save_hf_folder

    model, tokenizer = load_model(ctx.current_model, dtype="fp32")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(cfg.factor)
    out = save_hf_folder(model, tokenizer, ctx.stage_dir(name) / "model")
    return {"model": str(out), "factor": cfg.factor}


@pytest.fixture
def scale_kind():
    stage_registry.register_stage(ScaleStage, run_scale, help="multiply the weights")
    yield
    stage_registry.unregister_stage("scale")


def write(tmp_path, model_dir, stages) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": str(model_dir)}, "stages": stages, "run": {"progress": False}}))
    return str(path)


def test_registered_kind_validates_and_errors_name_its_fields(tmp_path, scale_kind):
    recipe = load_recipe(write(tmp_path, "m", [{"kind": "scale", "factor": 2.0}]))
    assert isinstance(recipe.stages[0], ScaleStage) and recipe.stage_names() == ["scale0"]
    with pytest.raises(UserError, match=r"recipe.yaml:\d+: stages\[0\].factor: "):
        load_recipe(write(tmp_path, "m", [{"kind": "scale", "factor": -1}]))
    with pytest.raises(UserError, match=r"stages\[0\].fator: unknown setting"):
        load_recipe(write(tmp_path, "m", [{"kind": "scale", "fator": 2}]))


def test_unregistered_kind_is_refused_again(tmp_path):
    stage_registry.register_stage(ScaleStage, run_scale)
    stage_registry.unregister_stage("scale")
    with pytest.raises(UserError, match=r"stages\[0\]"):
        load_recipe(write(tmp_path, "m", [{"kind": "scale"}]))


def test_cli_has_a_subcommand_per_registered_kind(scale_kind, capsys):
    from reasonloop.cli import _parser

    args = _parser().parse_args(["scale", "--model", "m"])
    assert args.command == "scale"


def test_pipeline_runs_a_registered_kind_and_chains_its_output(tmp_path, tiny_model_dir, scale_kind):
    import torch
    from safetensors.torch import load_file

    recipe = load_recipe(write(tmp_path, tiny_model_dir, [{"kind": "scale", "name": "half", "factor": 0.5},
                                                           {"kind": "scale", "name": "quarter", "factor": 0.5}]))
    summary = run_pipeline(recipe, tmp_path / "run", progress=False)
    assert [(s["name"], s["kind"], s["factor"]) for s in summary["stages"]] == [("half", "scale", 0.5),
                                                                              ("quarter", "scale", 0.5)]
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "run" / "stages" / "quarter" / "model" / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(after[key], before[key] * 0.25)


def test_kind_comes_from_the_config_models_literal():
    class NoKind(StageBase):
        pass

    with pytest.raises(TypeError, match="one-value Literal"):
        stage_registry.register_stage(NoKind, run_scale)
    assert stage_registry.stage_kinds()[:4] == ("eval", "sft", "rft", "rl")
