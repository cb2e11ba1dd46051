"""Pipeline entry of the RL stage: build the policy, reference, value head, curriculum, reward and engine a
recipe's rl section asks for, run `RLLoop`, save the model (the loop itself is in `stages/rl.py`)."""

from __future__ import annotations

import torch

from reasonloop import dist
from reasonloop.stages.rl import RLLoop, train_rl
from reasonloop.tasks import train_subset


def _reference_ref(ctx, cfg) -> str:
    """The RL reference: `reference` if set, else the latest SFT/RFT output, else the stage's start model."""
    if cfg.reference is not None:
        return ctx.resolve_model(cfg.reference)
    for stage, name in reversed(list(zip(ctx.recipe.stages, ctx.recipe.stage_names()))):
        if stage.kind in ("sft", "rft") and name in ctx.outputs:
            return ctx.outputs[name]
    return ctx.resolve_model(cfg.init_from)


def run(ctx, cfg, name: str) -> dict:
    """Pipeline entry: RL from the current model on the task's training problems."""
    from safetensors.torch import save_file

    from reasonloop.curriculum import estimate_difficulty, make_curriculum
    from reasonloop.generate import make_engine
    from reasonloop.checkpoint import save_model_folder
    from reasonloop.models import load_model, load_trainable
    from reasonloop.parallel import generation_model
    from reasonloop.stages.evaluate import periodic_eval
    from reasonloop.verify.rewards import build_reward

    recipe, task_cfg = ctx.recipe, ctx.recipe.task
    index = recipe.stage_names().index(name)
    model_ref = ctx.resolve_model(cfg.init_from)
    policy, tok = load_trainable(model_ref, recipe.model, recipe.run.parallel)
    ref_model = None
    if cfg.kl_coef > 0 and recipe.model.lora is None:
        ref_model, _ = load_model(_reference_ref(ctx, cfg), dtype=recipe.model.dtype)
        ref_model.requires_grad_(False)
    value_head = None
    if cfg.estimator().value_head:
        torch.manual_seed(cfg.seed)
        value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(next(policy.parameters()).device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    problems = train_subset(ctx.task.train, cfg)
    curriculum = None
    if cfg.curriculum.scheduler != "none":
        measured = ctx.store.problem_stats("pass_rate") if cfg.curriculum.difficulty == "pass_rate" else None
        diffs = estimate_difficulty(cfg.curriculum.difficulty, problems, measured)
        has_levels = bool(task_cfg.gym and task_cfg.gym.levels)
        curriculum = make_curriculum(cfg.curriculum, diffs, cfg.steps, stage_kind="rl", has_levels=has_levels,
                                     where=f"stages[{index}].curriculum")
    from reasonloop.stages.verifier_eval import resolve_verifier_reward

    rewards = [resolve_verifier_reward(ctx, n) for n in cfg.reward]  # `verifier:<stage>` -> its folder
    reward_fn = build_reward(rewards, cfg.reward_weights, task_cfg, where=f"stages[{index}].reward")
    slots = cfg.batch_size or cfg.prompts_per_step * cfg.group_size
    # Under FSDP the engine samples from a whole copy of the policy (parallel.generation_model).
    engine = make_engine(generation_model(policy, recipe.model.dtype), tok, kind=recipe.run.engine, max_batch=slots,
                         dtype=recipe.model.dtype, progress=False)
    loop = RLLoop(policy, tok, problems, cfg, task_cfg=task_cfg, engine=engine, reward_fn=reward_fn,
                  ref_model=ref_model, value_head=value_head, curriculum=curriculum, store=ctx.store, stage=name,
                  ckpt_dir=ctx.stage_dir(name) / "checkpoint", dtype=recipe.model.dtype)
    loop.eval_fn = periodic_eval(ctx, policy, tok, cfg, engine=engine)
    result = train_rl(loop, ctx.progress)
    out = save_model_folder(policy, tok, ctx.stage_dir(name) / "model")
    if dist.is_main() and value_head is not None:  # beside the HF folder, not inside: it stays a plain model
        save_file(value_head.state_dict(), str(ctx.stage_dir(name) / "value_head.safetensors"))
    dist.barrier()
    return {**result, "model": str(out)}
