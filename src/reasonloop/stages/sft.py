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
from reasonloop.checkpoint import resume_training, save_checkpoint, save_model_folder
from reasonloop.errors import UserError
from reasonloop.models import backbone_and_head, resolve_dtype
from reasonloop.optim import build_optimizer
from reasonloop.packing import pack_sequences, packed_hidden, plan_microbatches
from reasonloop.parallel import clip_grad_norm, lockstep
from reasonloop.stages.evaluate import periodic_eval
from reasonloop.stages.sft_data import Example, curriculum_order, masked_thought, shuffled_order
from reasonloop.tasks import train_subset
from reasonloop.tasks.base import Problem

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


class SftTrainer:
    """One SFT training run as a recipe object (torchtune's shape): setup in `__init__` (plan, optimizer,
    schedule), `resume()`, `step()`, `save()`, and `train()` to drive them. The state a step needs lives
    here instead of being passed from call to call; RFT trains each round with it, and the verifier stage
    subclasses it with its own `gradients`.

    `dtype` is the recipe's `model.dtype`: bf16 trains under bf16 autocast (fp32 master weights), fp32 without.
    """

    # Each rank takes every world-th micro-batch of a step (the verifier, which does not, sets False).
    shares_microbatches = True

    def __init__(self, model, tokenizer, examples: list[Example], cfg, *, store=None, stage: str = "sft",
                 ckpt_dir=None, ref_model=None, eval_fn=None, order_fn=None, dtype: str = "auto"):
        if not examples:
            raise UserError(f"{stage}: no training examples (all empty or longer than max_length?)")
        self.model, self.tokenizer, self.examples, self.cfg = model, tokenizer, examples, cfg
        self.store, self.stage, self.ckpt_dir = store, stage, ckpt_dir
        self.ref_model, self.eval_fn = ref_model, eval_fn
        self.device = next(model.parameters()).device
        self.use_bf16 = resolve_dtype(dtype, self.device) == torch.bfloat16
        self.plan = make_plan(examples, cfg, order_fn)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt, self.sched = build_optimizer(self.params, cfg.optim, self.plan.steps)
        self.mask_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
        self.done = 0  # optimizer steps taken
        self.last: dict = {}  # the last step's metrics: the run's result

    def resume(self) -> int:
        """Restore weights, optimizer, schedule and RNG from `ckpt_dir` if it holds a checkpoint (and drop
        the store's rows logged after it); returns the step to go on from."""
        resumed = resume_training(self.ckpt_dir, self.model, self.opt, self.sched, store=self.store,
                                  stage=self.stage) or {"step": 0}
        self.done, self.last = resumed["step"], resumed.get("last", {})
        return self.done

    def step(self) -> dict:
        """One optimizer step (the plan's next): gradients, clip, update; then eval, log and checkpoint as
        the config says. Returns the step's metrics."""
        t0 = time.time()
        metrics = self.gradients(self.plan.step_batches(self.done), step=self.done)
        grad_norm = clip_grad_norm(self.params, self.cfg.optim.max_grad_norm or float("inf"))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.done += 1
        self.last = self.step_metrics(metrics, self.sched.get_last_lr()[0], float(grad_norm), time.time() - t0)
        self._after_step()
        return self.last

    def step_metrics(self, metrics: dict, lr: float, grad_norm: float, seconds: float) -> dict:
        """What a step logs: its loss and nll, the update's size, its throughput."""
        return {"loss": metrics["loss"], "nll": metrics["nll"], "lr": lr, "grad_norm": grad_norm,
                "tokens": metrics["tokens"], "tokens_per_s": metrics["tokens"] / seconds}

    def gradients(self, batches: list[list[int]], *, step: int) -> dict[str, float]:
        """Accumulate one optimizer step's gradient over its micro-batches (this rank's share of them).

        Each micro-batch back-propagates its loss numerator; once every rank is done the summed gradient is
        divided by the step's global denominator (`algos.aggregate.aggregate_parts`), so the gradient is the
        same for any grad_accum or number of processes, for every objective (ProFit's kept-token count is
        only known after the forward, so no share can be fixed in advance). Returns the step's loss,
        response-token nll and input tokens.
        """
        rank, world = dist.rank(), dist.world_size()
        totals = torch.zeros(5)  # loss numerator, denominator, input tokens, nll sum, response tokens
        mine = [(j, mb) for j, mb in enumerate(batches) if j % world == rank]
        for (j, mb), real in lockstep(self.model, mine, spare=(0, batches[0])):
            # Masked Thought draws depend on (seed, step, micro-batch) only: same at any world size or resume.
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step * 1009 + j)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                loss, metrics, n_tok = microbatch_loss(self.model, self.examples, mb, self.cfg,
                                                       ref_model=self.ref_model, mask_id=self.mask_id,
                                                       generator=gen, device=self.device)
            denominator = metrics["denominator"].float()
            (loss * denominator * float(real)).backward()  # a spare pass (FSDP lockstep) adds nothing
            if not real:
                continue
            n_resp = _trained_tokens(self.examples, mb)
            totals += torch.tensor([loss.item() * denominator.item(), denominator.item(), n_tok,
                                    metrics["nll"].item() * n_resp, n_resp])
        dist.sync_gradients(self.params)  # sums the numerators' gradients over ranks
        dist.all_reduce_sum(totals)
        scale = 1.0 / max(totals[1].item(), 1.0)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(scale)
        return {"loss": totals[0].item() * scale, "tokens": totals[2].item(),
                "nll": totals[3].item() / max(totals[4].item(), 1.0)}

    def _after_step(self) -> None:
        done, cfg = self.done, self.cfg
        if self.eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0:
            self.last["eval_top1"] = self.eval_fn(done)
            self.model.train()
        if self.store is not None and dist.is_main():
            self.store.log_metrics(self.stage, done, self.last)
        if self.ckpt_dir is not None and (done % cfg.save_every == 0 or done == self.plan.steps):
            self.save()

    def save(self) -> None:
        """Checkpoint weights, optimizer, schedule and RNG at the current step (every rank gathers what FSDP
        shards, rank 0 writes, all wait)."""
        # The step's metrics go with it: a run killed after the last checkpoint still reports them.
        save_checkpoint(self.ckpt_dir, self.model, self.tokenizer, self.opt, self.sched,
                        {"step": self.done, "last": self.last})
        dist.barrier()

    def train(self, *, progress: bool = True) -> dict:
        """Resume if a checkpoint is there, then step to the end of the plan; the model is trained in place."""
        start = self.resume()
        world = dist.world_size()
        if self.shares_microbatches and self.cfg.grad_accum % world and dist.is_main():
            log.warning("%s: grad_accum=%d is not a multiple of the %d processes: some idle part of each step",
                        self.stage, self.cfg.grad_accum, world)
        self.model.train()
        bar = tqdm(total=self.plan.steps, initial=start, desc=self.stage, unit="step", dynamic_ncols=True,
                   disable=not progress or not dist.is_main())
        while self.done < self.plan.steps:
            last = self.step()
            bar.set_postfix(**self.progress_fields(last))
            bar.update(1)
        bar.close()
        return {"final_loss": self.last.get("loss"), "steps": self.plan.steps, "examples": len(self.examples)}

    def progress_fields(self, metrics: dict) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {"loss": f"{metrics['loss']:.4f}", "tok_s": f"{metrics['tokens_per_s']:.0f}"}


def sft_order_fn(ctx, cfg, examples: list[Example], pairs, name: str):
    """The example order of `cfg.curriculum` (None: shuffled). A JSONL pair whose id is no task problem is its
    own problem (its response as the reasoning), so `metadata` and `length` read its steps and words."""
    if cfg.curriculum.scheduler == "none":
        return None
    problems = {p.id: p for p in ctx.task.train}
    problems.update({pid: Problem(id=pid, question=prompt, answer="", reasoning=response)
                     for pid, prompt, response in pairs if pid not in problems})
    measured = ctx.store.problem_stats("pass_rate") if cfg.curriculum.difficulty == "pass_rate" else None
    where = f"stages[{ctx.recipe.stage_names().index(name)}].curriculum"
    return curriculum_order(cfg.curriculum, examples, problems, measured, cfg.seed, where)


def run(ctx, cfg, name: str) -> dict:
    """Pipeline entry: fine-tune the current model on the task's gold reasoning (or a JSONL)."""
    from reasonloop.models import load_model, load_trainable
    from reasonloop.stages.sft_data import examples_from_pairs, gold_pairs, jsonl_pairs

    model_ref = ctx.resolve_model(cfg.init_from)
    model, tok = load_trainable(model_ref, ctx.recipe.model, ctx.recipe.run.parallel)
    task_cfg = ctx.recipe.task
    train = train_subset(ctx.task.train, cfg)
    pairs = jsonl_pairs(tok, cfg.data_path, task_cfg) if cfg.data == "jsonl" else gold_pairs(tok, train, task_cfg)
    examples = examples_from_pairs(tok, pairs, cfg.max_length)
    order_fn = sft_order_fn(ctx, cfg, examples, pairs, name)
    ref_model = None
    if cfg.objective == "asft" and ctx.recipe.model.lora is None:
        ref_model, _ = load_model(model_ref, dtype=ctx.recipe.model.dtype)
    trainer = SftTrainer(model, tok, examples, cfg, store=ctx.store, stage=name,
                         ckpt_dir=ctx.stage_dir(name) / "checkpoint", ref_model=ref_model,
                         eval_fn=periodic_eval(ctx, model, tok, cfg), order_fn=order_fn,
                         dtype=ctx.recipe.model.dtype)
    result = trainer.train(progress=ctx.progress)
    out = save_model_folder(model, tok, ctx.stage_dir(name) / "model")
    return {**result, "model": str(out)}
