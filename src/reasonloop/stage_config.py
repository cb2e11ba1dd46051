"""The stage sections of a recipe (eval, sft, rft, rl) and the settings they share: decoding, optimizer
(the curriculum sections live in `curriculum_config`). `reasonloop.stage_registry` binds each to its kind;
`reasonloop.config` assembles the registered ones into the `Recipe`; import them from either module."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from reasonloop.curriculum_config import CurriculumConfig, SftCurriculum, Strict, registered  # noqa: F401


# --------------------------------------------------------------------------- stages


class Decoding(Strict):
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1: off)."""
    top_k: int = Field(0, ge=0)
    """Keep the k most likely tokens (0: off)."""
    min_p: float = Field(0.0, ge=0, lt=1)
    """Drop tokens below min_p times the top token's probability (0: off)."""
    max_new_tokens: int = Field(256, ge=1)
    """Longest completion in tokens."""
    stop: list[str] = []
    """Strings that end a completion (cut before them)."""


class StageBase(Strict):
    name: str | None = None
    """Stage name in the run folder; defaults to `<kind><index>`."""
    init_from: str | None = None
    """Model to start from: a stage name, `base` (the recipe's `model.path`), a path, or `default`.
    Defaults to the previous stage's output."""


class EvalStage(StageBase):
    kind: Literal["eval"]
    """Stage type."""
    limit: int | None = Field(None, ge=1)
    """Evaluate on the first N held-out problems (null: all)."""
    k: int = Field(4, ge=0)
    """Samples per problem for maj@k and pass@k (0 = greedy only)."""
    n: int | None = Field(None, ge=1)
    """Samples drawn per problem for pass@k (>= k; defaults to k)."""
    seeds: int = Field(1, ge=1)
    """Repeat the sampled metrics over this many seeds and report mean and 95% interval."""
    decoding: Decoding = Decoding()
    """Sampling settings for this stage."""
    batch_size: int = Field(64, ge=1)
    """Sequences decoded at once."""
    compare_to: str | None = None
    """The earlier eval stage this one is paired against (null: the eval just before it). Arms of an
    ablation that start from the same model name the eval of that model."""

    verifier: str | None = None
    """A trained verifier (a verifier stage's name, or the `verifier` folder one saved) that scores the k
    samples maj@k votes over: adds rerank@k (the sample it scores highest) and weighted maj@k (votes
    weighted by its P(correct)), each paired with top-1 and maj@k. No extra sampling."""

    @model_validator(mode="after")
    def _enough_samples_for_k(self):
        if self.k and self.n is not None and self.n < self.k:
            raise ValueError(f"n: pass@{self.k} needs at least k samples per problem; got n={self.n}")
        if self.verifier is not None and not self.k:
            raise ValueError("verifier: reranking needs sampled solutions; set k >= 1")
        return self


class OptimConfig(Strict):
    lr: float = Field(5e-5, ge=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to `lr`."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0: off)."""


class SftStage(StageBase):
    kind: Literal["sft"]
    """Stage type."""
    objective: str = "nll"
    """Per-token loss (METHODS.md §1), by its name in `reasonloop.algos.sft_loss.SFT_LOSSES`: `nll`, `dft`,
    `asft`, `profit`, `prob`."""
    aggregate: Literal["token_mean", "seq_mean"] = "token_mean"
    """Loss reduction over tokens (see algos.aggregate)."""
    asft_beta: float = 0.05
    """`asft`: weight of the per-token KL to the frozen start model."""
    profit_tau: float = 0.1
    """`profit`: train only on tokens whose probability is at least this."""
    prob_k: float = 1.0
    """`prob`: loss is -p^k."""
    masked_thought: float = 0.0
    """Fraction of reasoning input tokens replaced by a mask token (Masked Thought); targets unchanged."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_tokens: int = Field(4096, ge=1)
    """Tokens per micro-batch (packed sequences)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    max_length: int = 512
    """Examples longer than this are truncated."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and learning-rate schedule."""
    data: Literal["gold", "jsonl"] = "gold"
    """`gold`: the task's gold reasoning; `jsonl`: prompt/response pairs from `data_path`."""
    data_path: str | None = None
    """JSONL with `prompt` and `response` fields (data: jsonl)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N training examples."""
    skip: int = Field(0, ge=0)
    """Leave out the first N training problems (those an earlier stage trained on); `limit` counts after them."""
    save_every: int = Field(50, ge=1)
    """Checkpoint every N optimizer steps."""
    eval_every: int = 0
    """Evaluate on `eval_limit` held-out problems every N steps (0: off)."""
    eval_limit: int = 100
    """Held-out problems for periodic evaluation."""
    curriculum: SftCurriculum = SftCurriculum()
    """The order of the examples by difficulty: `none` (shuffled), `static` or `anneal` (METHODS.md §4)."""
    seed: int = 0
    """Seed of this stage's sampling and data order."""

    @field_validator("objective")
    @classmethod
    def _registered_objective(cls, value):
        from reasonloop.algos.sft_loss import SFT_LOSSES

        return registered(value, list(SFT_LOSSES))


class RftStage(StageBase):
    kind: Literal["rft"]
    """Stage type."""
    k: int = Field(4, ge=1)
    """Samples per training question."""
    decoding: Decoding = Decoding()
    """Sampling settings for this stage."""
    dedup: Literal["equations", "text", "exact"] = "equations"
    """What makes two correct solutions the same path."""
    check_equations: bool = False
    """Drop correct solutions whose written equations are arithmetically wrong."""
    include_gold: bool = True
    """Always keep the task's gold solution."""
    max_per_question: int = Field(4, ge=1)
    """Cap on kept distinct paths per question (most different kept)."""
    allocation: Literal["fixed", "uniform", "prop2diff"] = "fixed"
    """`fixed`: k samples each. DART: keep sampling until `min_correct` or `budget` per question."""
    min_correct: int = Field(2, ge=1)
    """DART: correct solutions wanted per question."""
    budget: int = Field(16, ge=1)
    """DART: most samples drawn per question."""
    rationalize: bool = False
    """STaR: re-sample unsolved questions with the gold answer as a hint."""
    pool_from: list[str] = []
    """More models (stage names / paths) or saved sample files (.jsonl) to pool paths from."""
    rounds: int = Field(1, ge=1)
    """Sample -> filter -> train rounds."""
    sample_from: str | None = None
    """Model the first round samples from: a stage name, a path or `default` (null: the stage's starting
    model, `init_from`). Later rounds sample from the previous round's output (Expert Iteration)."""
    train_from: Literal["base", "init", "last"] = "init"
    """What each round fine-tunes: `base`, the recipe's `model.path` (the RFT paper: sample from the SFT
    model, retrain the pre-trained model on gold + distinct paths); `init`, the stage's starting model;
    `last`, the previous round's output (round 0: the starting model)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N training questions."""
    skip: int = Field(0, ge=0)
    """Leave out the first N training questions (those an earlier stage trained on); `limit` counts after them."""
    train: SftStage = Field(default_factory=lambda: SftStage(kind="sft"))
    """The SFT loop settings used to train on the kept paths."""
    batch_size: int = Field(64, ge=1)
    """Sequences decoded at once."""
    seed: int = 0
    """Seed of this stage's sampling and data order."""

    @field_validator("train", mode="before")
    @classmethod
    def _train_is_sft(cls, value):
        """`train` is always an SFT section; users need not write `kind: sft` inside it."""
        return {"kind": "sft", **value} if isinstance(value, dict) else value


class RlStage(StageBase):
    kind: Literal["rl"]
    """Stage type."""
    algorithm: str = "grpo"
    """Advantage estimator, by its registered name (`reasonloop.algos.estimators`): `grpo`, `rloo`, or `ppo`
    (PPO with a value head and GAE, as in ReFT)."""
    steps: int = Field(20, ge=1)
    """Rollout-and-update steps."""
    prompts_per_step: int = Field(8, ge=1)
    """Distinct prompts per rollout step."""
    group_size: int = Field(4, ge=1)
    """Samples per prompt (G)."""
    batch_size: int | None = Field(None, ge=1)
    """Sequences decoded at once, i.e. KV-cache slots (null: all of a step's prompts_per_step x group_size).
    Lower bounds the cache, which sits beside the model and its optimizer state: ~46 kB per token for
    SmolLM2-135M in fp32, ~1 GB for 256 sequences of 90 tokens."""
    decoding: Decoding = Decoding(temperature=1.0)
    """Sampling settings for this stage."""
    reward: list[str] = ["correct"]
    """Reward functions: `correct`, `partial` (ReFT 1/0.1/0), `format`, or `module:function`."""
    reward_weights: list[float] | None = None
    """Weights of the reward functions (default: all 1)."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference model (0: none, and no reference model is loaded)."""
    kl_in: Literal["reward", "loss"] | None = None
    """Where the KL goes: a per-token penalty in the reward (ReFT's PPO) or a loss term (GRPO).
    Null: the estimator's default (`ppo`: reward; `grpo`, `rloo`: loss)."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """KL estimator (Schulman's k1/k2/k3), used wherever the KL goes. Null: the estimator's default
    (`ppo`: k1, ReFT's log-ratio penalty; `grpo`, `rloo`: k3, as in DeepSeekMath)."""
    clip_low: float = 0.2
    """PPO ratio clip below 1."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (DAPO clip-higher when larger)."""
    epochs: int = Field(1, ge=1)
    """Passes over each rollout batch (PPO: 2 in ReFT)."""
    minibatches: int = Field(1, ge=1)
    """Minibatches per rollout batch and epoch (one optimizer step each)."""
    micro_batch_tokens: int = Field(2048, ge=1)
    """Most tokens in one forward of the update (a group's shared prompt counts once); a minibatch larger
    than this accumulates gradients over several forwards. Bounds activation memory, not the result."""
    aggregate: Literal["token_mean", "seq_mean", "seq_sum_norm"] = "token_mean"
    """Loss reduction; `seq_sum_norm` divides each sequence's sum by max_new_tokens (Dr. GRPO)."""
    scale_std: bool = True
    """GRPO: divide group-centred rewards by the group std."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and sample more (up to `max_tries` rounds)."""
    max_tries: int = 3
    """Dynamic sampling: most extra sampling rounds per step."""
    gamma: float = 1.0
    """PPO: GAE discount."""
    lam: float = 0.95
    """PPO: GAE lambda."""
    vf_coef: float = 5.0
    """PPO: value-loss weight."""
    value_clip: float = 0.2
    """PPO: value clip range."""
    whiten_advantages: bool = True
    """PPO: normalise advantages over the batch."""
    reference: str | None = None
    """Reference model of the KL term: a stage name or path. Null: the output of the last sft or rft stage
    before this one, else this stage's starting model. With LoRA the reference is the base without adapters."""
    optim: OptimConfig = OptimConfig(lr=1e-6, schedule="constant")
    """Optimizer and learning-rate schedule."""
    curriculum: CurriculumConfig = CurriculumConfig()
    """Which problems come next (METHODS.md §4)."""
    save_every: int = Field(5, ge=1)
    """Checkpoint every N steps."""
    eval_every: int = Field(0, ge=0)
    """Evaluate greedily on the first `eval_limit` held-out problems every N steps and log `eval_top1`
    (the report plots it): a learning curve without extra runs (0: off)."""
    eval_limit: int = Field(100, ge=1)
    """Held-out problems for periodic evaluation."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N training questions."""
    skip: int = Field(0, ge=0)
    """Leave out the first N training questions (those an earlier stage trained on); `limit` counts after them."""
    seed: int = 0
    """Seed of this stage's sampling and data order."""

    @field_validator("algorithm")
    @classmethod
    def _registered_estimator(cls, value):
        from reasonloop.algos.estimators import estimators

        return registered(value, sorted(estimators()))

    @model_validator(mode="after")
    def _groups_for_group_baselines(self):
        if self.estimator().groups and self.group_size < 2:
            raise ValueError(f"group_size: {self.algorithm} compares samples of one prompt, so it needs "
                             f"group_size >= 2 (got {self.group_size}); use ppo for one sample per prompt")
        return self

    def estimator(self):
        """The registered advantage estimator this stage uses."""
        from reasonloop.algos.estimators import get_estimator

        return get_estimator(self.algorithm)

    def kl_estimator_or_default(self) -> str:
        return self.kl_estimator or self.estimator().kl_estimator

    def kl_in_or_default(self) -> str:
        return self.kl_in or self.estimator().kl



class VerifierStage(StageBase):
    """Sample k solutions per training question, label them with the task's judge, train a scalar-head
    verifier on them (Cobbe et al. 2021; ReFT's reranker) and save it as a sequence-classification folder."""

    kind: Literal["verifier"]
    """Stage type."""
    init_from: str | None = None
    """Model the verifier's backbone starts from: a stage name, `base`, a path or `default`. Null: the output
    of the last sft stage before this one (ReFT and Cobbe et al. start from the SFT model), else the
    current model."""
    sample_from: str | None = None
    """Model whose solutions are sampled and labelled: a stage name, `base`, a path or `default` (null: the
    current model, the previous stage's output)."""
    k: int = Field(8, ge=1)
    """Samples per training question."""
    decoding: Decoding = Decoding()
    """Sampling settings for this stage."""
    objective: Literal["outcome", "token"] = "outcome"
    """`outcome`: one prediction per solution at its last token; `token`: one after every response token
    (Cobbe et al.'s token-level value), all trained towards the solution's label."""
    holdout: float = Field(0.2, ge=0, lt=1)
    """Share of the questions (all their samples) kept out of training to measure the verifier on."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the labelled samples."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_tokens: int = Field(4096, ge=1)
    """Tokens per micro-batch (packed solutions)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    max_length: int = Field(512, ge=2)
    """Longer solutions lose the start of their prompt (never the answer at the end)."""
    optim: OptimConfig = OptimConfig(lr=1e-5)
    """Optimizer and learning-rate schedule."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N training questions."""
    skip: int = Field(0, ge=0)
    """Leave out the first N training questions; `limit` counts after them."""
    batch_size: int = Field(64, ge=1)
    """Sequences decoded at once."""
    save_every: int = Field(50, ge=1)
    """Checkpoint every N optimizer steps."""
    seed: int = 0
    """Seed of this stage's sampling, head initialisation and data order."""
