"""The SFT stage: token-level objectives on packed (prompt, response) examples, a readable loop.

Loss on response tokens only; sequences packed without attention or position leakage
(reasonloop.packing); the LM head applied only to trained positions, chunked so full-vocabulary
logits never exist for all positions at once (algos.logprobs). Each optimizer step's loss is
normalised by the step's global token (or sequence) count, so gradient accumulation and the number
of processes do not change what a step means.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from reasonloop import dist
from reasonloop.algos.logprobs import token_logprobs
from reasonloop.algos.sft_loss import sft_loss
from reasonloop.checkpoint import resume_training, save_checkpoint
from reasonloop.models import backbone_and_head, resolve_dtype
from reasonloop.optim import build_optimizer
from reasonloop.packing import pack_sequences, packed_hidden, plan_microbatches
from reasonloop.stages.evaluate import periodic_eval
from reasonloop.stages.sft_data import Example, masked_thought, shuffled_order
from reasonloop.tasks import train_subset

log = logging.getLogger(__name__)


@dataclass
class Plan:
    microbatches: list[list[int]]  # example indices per micro-batch, in training order
    steps: int
    grad_accum: int

    def step_batches(self, step: int) -> list[list[int]]:
        return self.microbatches[step * self.grad_accum:(step + 1) * self.grad_accum]


def make_plan(examples: list[Example], cfg, order_fn=None) -> Plan:
    """Micro-batches for all epochs, fixed up front from the seed, so a resumed run sees the same data."""
    per_epoch = None
    mbs: list[list[int]] = []
    for epoch in range(max(1, math.ceil(cfg.epochs))):
        order = order_fn(epoch) if order_fn else shuffled_order(len(examples), cfg.seed, epoch)
        epoch_mbs = [[order[i] for i in mb] for mb in
                     plan_microbatches([len(examples[i].ids) for i in order], cfg.batch_tokens)]
        per_epoch = per_epoch or len(epoch_mbs)
        mbs += epoch_mbs
    mbs = mbs[: max(1, int(round(cfg.epochs * per_epoch)))]
    steps = math.ceil(len(mbs) / cfg.grad_accum)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps) if cfg.epochs else cfg.max_steps
    return Plan(mbs, steps, cfg.grad_accum)


def _trained_tokens(examples: list[Example], mb: list[int]) -> int:
    return sum(len(examples[i].ids) - examples[i].n_prompt for i in mb)


def microbatch_loss(model, examples: list[Example], mb: list[int], cfg, *, ref_model=None,
                    mask_id: int = 0, generator=None, device="cpu") -> tuple[torch.Tensor, dict, int]:
    """Objective on one packed micro-batch: (loss, metrics, tokens). The loss is the micro-batch's
    aggregate (token mean or sequence mean) as `algos.sft_loss` defines it."""
    exs = [examples[i] for i in mb]
    batch = pack_sequences([e.ids for e in exs], [e.n_prompt for e in exs], device=device)
    if cfg.masked_thought > 0:
        ends = torch.tensor([e.n_prompt for e in exs]).repeat_interleave(torch.tensor(batch.seq_lens))
        pos = batch.position_ids[0].cpu()
        lens = torch.tensor(batch.seq_lens).repeat_interleave(torch.tensor(batch.seq_lens))
        response = (pos >= ends) & (pos < lens - 1)  # [N]: response inputs, not the final end-of-turn
        batch.input_ids = masked_thought(batch.input_ids[0].cpu(), response, cfg.masked_thought, mask_id,
                                         generator).to(device)[None]
    hidden = packed_hidden(model, batch)  # [N, H]
    _, head = backbone_and_head(model)
    sel = batch.pred_index
    ref_hidden = ref_weight = None
    if cfg.objective == "asft":
        # The anchor is the frozen start model: a separate copy, or (LoRA) the base with adapters off.
        lora_base = ref_model is None and hasattr(model, "disable_adapter")
        ref = model if lora_base else ref_model
        with torch.no_grad(), (model.disable_adapter() if lora_base else nullcontext()):
            ref_hidden = packed_hidden(ref, batch)[sel]
            ref_weight = backbone_and_head(ref)[1].detach()
    stats = token_logprobs(hidden[sel], head, batch.targets, ref_hidden=ref_hidden, ref_weight=ref_weight)
    S, L = batch.num_seqs, batch.max_len
    slots = batch.pred_slots

    def as_2d(values):  # [n_trained] -> [S, L] in the padded layout, for per-sequence reductions
        out = torch.zeros(S * L, dtype=values.dtype, device=values.device)
        return out.index_put((slots,), values).view(S, L)

    mask2d = as_2d(torch.ones_like(stats["logp"])).bool()
    loss, metrics = sft_loss(cfg.objective, as_2d(stats["logp"]), mask2d,
                             kl=as_2d(stats["kl"]) if "kl" in stats else None, beta=cfg.asft_beta,
                             tau=cfg.profit_tau, k=cfg.prob_k, mode=cfg.aggregate)
    return loss, metrics, int(batch.input_ids.shape[1])


def train_sft(model, tokenizer, examples: list[Example], cfg, *, store=None, stage: str = "sft",
              ckpt_dir=None, ref_model=None, progress: bool = True, eval_fn=None, order_fn=None,
              dtype: str = "auto") -> dict:
    """Train `model` in place on `examples` with an SftStage config; resume from `ckpt_dir` if present.

    `dtype` is the recipe's `model.dtype`: bf16 trains under bf16 autocast (fp32 master weights), fp32 without.
    """
    if not examples:
        from reasonloop.errors import UserError

        raise UserError(f"{stage}: no training examples (all empty or longer than max_length?)")
    device = next(model.parameters()).device
    use_bf16 = resolve_dtype(dtype, device) == torch.bfloat16
    plan = make_plan(examples, cfg, order_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, cfg.optim, plan.steps)
    resumed = resume_training(ckpt_dir, model, opt, sched, store=store, stage=stage) or {"step": 0}
    start, last = resumed["step"], resumed.get("last", {})
    mask_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
    world = dist.world_size()
    if cfg.grad_accum % world and dist.is_main():
        log.warning("%s: grad_accum=%d is not a multiple of the %d processes: some idle part of each step",
                    stage, cfg.grad_accum, world)
    model.train()
    bar = tqdm(total=plan.steps, initial=start, desc=stage, disable=not progress or not dist.is_main(),
               unit="step", dynamic_ncols=True)
    for step in range(start, plan.steps):
        t0 = time.time()
        totals = step_gradients(model, examples, plan.step_batches(step), cfg, step=step, ref_model=ref_model,
                                mask_id=mask_id, device=device, use_bf16=use_bf16)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.time() - t0
        last = {"loss": totals["loss"], "nll": totals["nll"], "lr": sched.get_last_lr()[0],
                "grad_norm": float(grad_norm), "tokens": totals["tokens"], "tokens_per_s": totals["tokens"] / dt}
        _after_step(step + 1, plan, last, model, tokenizer, opt, sched, cfg, store, stage, ckpt_dir, eval_fn)
        bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
        bar.update(1)
    bar.close()
    return {"final_loss": last.get("loss"), "steps": plan.steps, "examples": len(examples)}


def step_gradients(model, examples: list[Example], batches: list[list[int]], cfg, *, step: int, ref_model=None,
                   mask_id: int = 0, device="cpu", use_bf16: bool = False) -> dict[str, float]:
    """Accumulate one optimizer step's gradient over its micro-batches (this rank's share of them).

    Each micro-batch back-propagates its loss numerator; once every rank is done the summed gradient is
    divided by the step's global denominator (`algos.aggregate.aggregate_parts`), so the gradient is the
    same for any grad_accum or number of processes, for every objective (ProFit's kept-token count is only
    known after the forward, so no share can be fixed in advance). Returns the step's loss, response-token
    nll and input tokens.
    """
    rank, world = dist.rank(), dist.world_size()
    params = [p for p in model.parameters() if p.requires_grad]
    totals = torch.zeros(5)  # loss numerator, denominator, input tokens, nll sum, response tokens
    for j, mb in enumerate(batches):
        if j % world != rank:
            continue
        # Masked Thought draws depend on (seed, step, micro-batch) only: same at any world size or resume.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + j)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, metrics, n_tok = microbatch_loss(model, examples, mb, cfg, ref_model=ref_model,
                                                   mask_id=mask_id, generator=gen, device=device)
        denominator = metrics["denominator"].float()
        (loss * denominator).backward()
        n_resp = _trained_tokens(examples, mb)
        totals += torch.tensor([loss.item() * denominator.item(), denominator.item(), n_tok,
                                metrics["nll"].item() * n_resp, n_resp])
    dist.sync_gradients(params)  # sums the numerators' gradients over ranks
    dist.all_reduce_sum(totals)
    scale = 1.0 / max(totals[1].item(), 1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    return {"loss": totals[0].item() * scale, "tokens": totals[2].item(),
            "nll": totals[3].item() / max(totals[4].item(), 1.0)}


def _after_step(done, plan, metrics, model, tokenizer, opt, sched, cfg, store, stage, ckpt_dir, eval_fn):
    if eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0:
        metrics["eval_top1"] = eval_fn(done)
        model.train()
    if store is not None and dist.is_main():
        store.log_metrics(stage, done, metrics)
    if ckpt_dir is not None and (done % cfg.save_every == 0 or done == plan.steps):
        if dist.is_main():
            # The step's metrics go with it: a run killed after the last checkpoint still reports them.
            save_checkpoint(ckpt_dir, model, tokenizer, opt, sched, {"step": done, "last": metrics})
        dist.barrier()


def run(ctx, cfg, name: str) -> dict:
    """Pipeline entry: fine-tune the current model on the task's gold reasoning (or a JSONL)."""
    from reasonloop.models import load_model, save_hf_folder
    from reasonloop.stages.sft_data import examples_from_pairs, gold_pairs, jsonl_pairs

    model_ref = ctx.resolve_model(cfg.init_from)
    model, tok = load_model(model_ref, dtype=ctx.recipe.model.dtype, lora=ctx.recipe.model.lora,
                            trainable=True)
    task_cfg = ctx.recipe.task
    train = train_subset(ctx.task.train, cfg)
    pairs = jsonl_pairs(tok, cfg.data_path, task_cfg) if cfg.data == "jsonl" else gold_pairs(tok, train, task_cfg)
    examples = examples_from_pairs(tok, pairs, cfg.max_length)
    ref_model = None
    if cfg.objective == "asft" and ctx.recipe.model.lora is None:
        ref_model, _ = load_model(model_ref, dtype=ctx.recipe.model.dtype)
    result = train_sft(model, tok, examples, cfg, store=ctx.store, stage=name,
                       ckpt_dir=ctx.stage_dir(name) / "checkpoint", ref_model=ref_model,
                       progress=ctx.progress, eval_fn=periodic_eval(ctx, model, tok, cfg),
                       dtype=ctx.recipe.model.dtype)
    out = ctx.stage_dir(name) / "model"
    if dist.is_main():
        save_hf_folder(model, tok, out)
    dist.barrier()
    return {**result, "model": str(out)}
