"""The RL stage on verifiable rewards: GRPO, RLOO, and PPO with a value head as in ReFT.

One step: pick prompts (curriculum or a seeded order) -> sample G completions each with the rollout
engine -> rewards -> (dynamic sampling: drop groups whose rewards are all equal, sample more) ->
advantages -> `epochs` passes of clipped policy updates in `minibatches` -> refresh the engine.

- GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, KL to the reference as a loss term.
- RLOO (Ahmadian et al. 2024): leave-one-out baseline.
- PPO as in ReFT (Luong et al. 2024, "ReFT: Reasoning with Reinforced Fine-Tuning"): a value head on the
  policy backbone, the score on the last token, a per-token KL penalty to the SFT reference folded
  into the reward, GAE, advantage whitening.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from reasonloop import dist
from reasonloop.algos.advantages import zero_variance_groups
from reasonloop.algos.aggregate import aggregate_denominator, masked_mean
from reasonloop.algos.estimators import AdvantageInput
from reasonloop.algos.kl import kl_penalty
from reasonloop.algos.rl_loss import rl_loss
from reasonloop.checkpoint import resume_training, save_checkpoint
from reasonloop.errors import UserError
from reasonloop.models import resolve_dtype
from reasonloop.optim import build_optimizer
from reasonloop.parallel import clip_grad_norm, generation_model, lockstep
from reasonloop.stages.rollout import generate_judged, sample_keys, sampling_params
from reasonloop.stages.rl_batch import (Rollout, completion_mask, curriculum_stats, last_token_scores,
                                        pack_rollout, plan_micro_batches, policy_stats, rollout_metrics,
                                        row_mask)
from reasonloop.stages.sft_data import shuffled_order
from reasonloop.tasks.prompt import encode_prompt, prompt_text

log = logging.getLogger(__name__)


class RLLoop:
    """The state one RL stage carries between steps; `step()` is the loop body."""

    def __init__(self, policy, tokenizer, problems, cfg, *, task_cfg, engine, reward_fn, ref_model=None,
                 value_head=None, curriculum=None, store=None, stage="rl", ckpt_dir=None, eval_fn=None,
                 dtype: str = "auto"):
        self.policy, self.tok, self.problems, self.cfg = policy, tokenizer, problems, cfg
        self.task_cfg, self.engine, self.reward_fn = task_cfg, engine, reward_fn
        self.ref_model, self.value_head, self.curriculum = ref_model, value_head, curriculum
        self.store, self.stage, self.ckpt_dir, self.eval_fn = store, stage, ckpt_dir, eval_fn
        self.estimator, self.kl_in = cfg.estimator(), cfg.kl_in_or_default()
        self.device = next(policy.parameters()).device
        self.dtype = dtype
        # The recipe's model.dtype, as the engine reads it: bf16 -> forward passes under bf16 autocast.
        self.bf16 = resolve_dtype(dtype, self.device) == torch.bfloat16
        self.params = [p for p in policy.parameters() if p.requires_grad]
        if value_head is not None:
            self.params += list(value_head.parameters())
        self.opt, self.sched = build_optimizer(self.params, cfg.optim, cfg.steps)
        self.state = {"step": 0, "cursor": 0,
                      "curriculum": curriculum.init_state() if curriculum is not None else None}
        self.order = shuffled_order(len(problems), cfg.seed, 0)
        self._prompt_cache: dict[int, list[int]] = {}
        self.seconds: dict[str, float] = {}  # this step's time per phase, logged as time/<phase>

    @contextmanager
    def _timed(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ rollout
    def _pick(self, n: int, attempt: int) -> list[int]:
        if self.curriculum is not None:
            rng = np.random.default_rng([self.cfg.seed, self.state["step"], attempt])
            return self.curriculum.sample(self.state["curriculum"], n, rng)
        start = self.state["cursor"]
        self.state["cursor"] = start + n
        return [self.order[(start + j) % len(self.order)] for j in range(n)]

    def _prompt_ids(self, i: int) -> list[int]:
        if i not in self._prompt_cache:
            p = self.problems[i]
            text = prompt_text(self.tok, p.question, self.task_cfg.prompt, self.task_cfg.answer_format)
            self._prompt_cache[i] = encode_prompt(self.tok, text)
        return self._prompt_cache[i]

    def _sample(self, indices: list[int], attempt: int, positions: list[int]) -> Rollout:
        """G samples of each problem in ``indices``; the one at ``positions[k]`` of the step's global pick
        is seeded by that position, so 1 and N processes draw the same rollouts (and a problem picked
        twice in one step draws two different groups)."""
        cfg = self.cfg
        params = sampling_params(cfg.decoding, cfg.group_size,
                                 seed=cfg.seed * 1_000_003 + self.state["step"] * 101 + attempt)
        prompts = [self._prompt_ids(i) for i in indices]
        keys = sample_keys(params.seed, [f"{g}:{i}" for g, i in zip(positions, indices)], cfg.group_size)
        groups = generate_judged(self.engine, prompts, [self.problems[i] for i in indices], self.task_cfg, params,
                                 progress=False, seconds=self.seconds, keys=keys)
        rows = [(i, p, s, v) for i, p, group in zip(indices, prompts, groups) for s, v in group]
        problems = [self.problems[i] for i, _, _, _ in rows]
        texts = [s.text for _, _, s, _ in rows]
        verdicts = [v for _, _, _, v in rows]  # judged once: rewards and accuracy share them
        rewards = self._rewards(texts, problems, verdicts)
        return Rollout(problems, [i for i, _, _, _ in rows], [p for _, p, _, _ in rows],
                       [s.token_ids for _, _, s, _ in rows], texts, [s.finish_reason for _, _, s, _ in rows],
                       torch.tensor(rewards, dtype=torch.float32), [v.correct for v in verdicts])

    def _rewards(self, texts, problems, verdicts) -> list[float]:
        """A reward function that raises or returns NaN stops the stage, after a checkpoint. Under torchrun
        every rank stops, with the error of the lowest rank it happened on."""
        rewards, why = None, None
        try:
            if hasattr(self.reward_fn, "breakdown"):  # built-in rewards reuse the verdicts
                rewards = self.reward_fn.breakdown(texts, problems, verdicts)[0]
            else:
                rewards = self.reward_fn(texts, problems)
        except Exception as err:  # user code: anything can come out of it
            why = str(err) if isinstance(err, UserError) else f"reward raised {type(err).__name__}: {err}"
        failed = dist.first_failure(why)
        if failed is None:
            return rewards
        rank, why = failed
        self.save()  # on every rank: an FSDP checkpoint is gathered collectively
        where = f" (rank {rank})" if dist.active() else ""
        raise UserError(f"{self.stage}: {why}{where} (checkpoint saved at step {self.state['step']}; "
                        "fix the reward and run the same command to resume)")

    def collect(self) -> tuple[Rollout | None, Rollout | None]:
        """This step's rollouts: (those the update trains on, every rollout sampled).

        With dynamic sampling, groups whose rewards are all equal are dropped from the first and replaced
        by more sampling; the second keeps them, so metrics and the curriculum see every group.
        """
        cfg, G = self.cfg, self.cfg.group_size
        want = max(1, cfg.prompts_per_step // dist.world_size())
        kept, sampled = [], []
        tries = 1 + (cfg.max_tries if cfg.dynamic_sampling else 0)
        for attempt in range(tries):
            # The rank furthest from its share decides: every rank picks (and advances the cursor) alike.
            need = int(dist.all_reduce_max(want - sum(len(p) for p in kept) // G))
            if need <= 0:
                break
            rank, world = dist.rank(), dist.world_size()
            picked = self._pick(need * world, attempt)
            ro = self._sample(picked[rank::world], attempt, list(range(len(picked)))[rank::world])
            sampled.append(ro)
            if cfg.dynamic_sampling and G > 1:
                flat = zero_variance_groups(ro.rewards, G)
                ro = ro.select([r for r in range(len(ro)) if not flat[r // G]])
            kept.append(ro)
        rollout = Rollout.concat(kept) if kept else None
        if rollout is not None and len(rollout) > want * G:
            rollout = rollout.select(list(range(want * G)))
        everything = Rollout.concat(sampled) if sampled else None
        return (rollout if rollout is not None and len(rollout) else None), everything

    # ------------------------------------------------------------------ update
    def _no_grad_stats(self, model, rollout, values=False, disable_adapter=False):
        """Per-token stats of all rows in the [N, L] layout, computed in micro-batches to bound memory."""
        n = len(rollout)
        full_len = max(len(p) + len(c) for p, c in zip(rollout.prompt_ids, rollout.completion_ids))
        out: dict[str, torch.Tensor] = {}
        ctx = model.disable_adapter() if disable_adapter else nullcontext()
        plan = plan_micro_batches(rollout, list(range(n)), self.cfg.micro_batch_tokens)
        with torch.no_grad(), ctx, self._autocast():
            for rows, real in lockstep(model, plan, spare=plan[0]):
                batch = pack_rollout(rollout, rows, self.device)
                stats = policy_stats(model, batch, self.cfg.decoding.temperature,
                                     value_head=self.value_head if values else None)
                if not real:  # a spare forward, only to join FSDP's collectives
                    continue
                for k, v in stats.items():
                    out.setdefault(k, torch.zeros(n, full_len, dtype=torch.float32, device=self.device))
                    out[k][rows, : batch.max_len] = v.float()
        return out

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _advantages(self, rollout, old, ref_logp, mask):
        """The registered estimator's advantages [N] or [N, L] (and returns, with a value head)."""
        cfg, est = self.cfg, self.estimator
        token_rewards = None
        if est.value_head:  # per-token rewards: the score on the last token ...
            token_rewards = last_token_scores(rollout.rewards.to(self.device), mask)  # [N, L]
            if ref_logp is not None and self.kl_in == "reward":  # ... minus the KL penalty on every token
                kl = kl_penalty(old["logp"], ref_logp, cfg.kl_estimator_or_default())  # [N, L]
                token_rewards = token_rewards - cfg.kl_coef * kl * mask
        inp = AdvantageInput(rewards=rollout.rewards.to(self.device), group_size=cfg.group_size, mask=mask,
                             token_rewards=token_rewards, values=old["values"] if est.value_head else None)
        return est.fn(inp, **{name: getattr(cfg, name) for name in est.settings})

    def update(self, rollout: Rollout) -> dict[str, float]:
        cfg, value_head = self.cfg, self.estimator.value_head
        need_old = value_head or cfg.epochs > 1 or cfg.minibatches > 1
        old = None
        if need_old:
            with self._timed("old_logprobs"):
                old = self._no_grad_stats(self.policy, rollout, values=value_head)
        ref_logp = None
        if cfg.kl_coef > 0:
            lora_ref = self.ref_model is None
            with self._timed("ref_logprobs"):
                ref_logp = self._no_grad_stats(self.policy if lora_ref else self.ref_model, rollout,
                                               disable_adapter=lora_ref)["logp"]
        full = pack_rollout(rollout, list(range(len(rollout))), self.device)
        mask_full = row_mask(full)
        adv, returns = self._advantages(rollout, old, ref_logp, mask_full)
        sums: dict[str, float] = {}
        count = 0
        self.policy.train()
        # Every rank must take the same number of optimizer steps (each is a collective).
        splits = min(cfg.minibatches, -int(dist.all_reduce_max(-len(rollout))))
        for epoch in range(cfg.epochs):
            perm = np.random.default_rng([cfg.seed, self.state["step"], epoch]).permutation(len(rollout))
            for rows in np.array_split(perm, splits):
                with self._timed("update"):
                    m = self._minibatch(rollout, rows.tolist(), old, ref_logp, adv, returns)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        self.sched.step()
        return {k: v / count for k, v in sums.items()}

    def _minibatch(self, rollout, rows, old, ref_logp, adv, returns) -> dict[str, float]:
        """One optimizer step on ``rows``, accumulated over micro-batches of at most `micro_batch_tokens`."""
        cfg = self.cfg
        norm = float(cfg.decoding.max_new_tokens)  # seq_sum_norm's constant (Dr. GRPO)
        micro = plan_micro_batches(rollout, rows, cfg.micro_batch_tokens)
        counts = [aggregate_denominator(completion_mask(rollout, m), cfg.aggregate, norm) for m in micro]
        # Each micro-batch's loss is an aggregate over its own rows; weighted by its share of the
        # minibatch's count (over every rank) and summed, it is the minibatch's loss, however it was split.
        total = sum(counts)
        if dist.active():
            total = dist.all_reduce_sum(torch.tensor([total], dtype=torch.float64)).item()
        metrics: dict[str, float] = {}
        for (m, count), real in lockstep(self.policy, list(zip(micro, counts)), spare=(micro[0], 0)):
            part = count / total if total > 0 and real else 0.0  # a spare pass (FSDP lockstep) adds nothing
            parts = self._micro_loss(rollout, m, old, ref_logp, adv, returns, part)
            for k, v in parts.items() if real else ():
                metrics[k] = metrics.get(k, 0.0) + v * part
        dist.sync_gradients(self.params)
        metrics = dist.sum_metrics(metrics) if dist.active() else metrics
        metrics["grad_norm"] = clip_grad_norm(self.params, cfg.optim.max_grad_norm or 1e9)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return metrics

    def _micro_loss(self, rollout, rows, old, ref_logp, adv, returns, weight: float) -> dict[str, float]:
        """Backpropagate ``weight`` times the loss of ``rows``; return its (unweighted) metrics."""
        cfg = self.cfg
        batch = pack_rollout(rollout, rows, self.device)
        L, mask = batch.max_len, row_mask(batch)
        with self._autocast():
            cur = policy_stats(self.policy, batch, cfg.decoding.temperature, with_entropy=True,
                               value_head=self.value_head)
        old_logp = old["logp"][rows, :L] if old is not None else cur["logp"].detach()
        a = adv[rows] if adv.dim() == 1 else adv[rows, :L]
        kl = kl_penalty(cur["logp"], ref_logp[rows, :L], cfg.kl_estimator_or_default()) \
            if ref_logp is not None else None  # [S, L]
        value_parts = {}
        if self.estimator.value_head:
            value_parts = dict(values=cur["values"], old_values=old["values"][rows, :L], returns=returns[rows, :L],
                               value_clip=cfg.value_clip, vf_coef=cfg.vf_coef)
        loss, parts = rl_loss(cur["logp"], old_logp, a, mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                              mode=cfg.aggregate, norm_const=float(cfg.decoding.max_new_tokens), kl=kl,
                              kl_coef=cfg.kl_coef if self.kl_in == "loss" else 0.0, **value_parts)
        (loss * weight).backward()
        metrics = {k: v.item() for k, v in parts.items()}
        metrics["entropy"] = masked_mean(cur["entropy"], mask).item()
        metrics["loss"] = loss.item()
        return metrics

    # ------------------------------------------------------------------ bookkeeping
    def save(self) -> None:
        """Every rank calls it (an FSDP policy is gathered); rank 0 writes."""
        if self.ckpt_dir is None:
            return
        extra = {"value_head": self.value_head} if self.value_head is not None else None
        save_checkpoint(self.ckpt_dir, self.policy, self.tok, self.opt, self.sched, dict(self.state), extra)

    def resume(self) -> None:
        modules = {"value_head": self.value_head} if self.value_head is not None else None
        state = resume_training(self.ckpt_dir, self.policy, self.opt, self.sched, store=self.store,
                                stage=self.stage, modules=modules)
        if state is not None:
            self.state = state
            self.engine.update_weights(generation_model(self.policy, self.dtype))

    def step(self) -> dict[str, float]:
        """One rollout-and-update step; returns its metrics."""
        t0 = time.time()
        self.seconds = {}
        self.policy.eval()
        rollout, sampled = self.collect()
        t_gen = time.time() - t0
        metrics = rollout_metrics(rollout, sampled, self.cfg.group_size, self.cfg.dynamic_sampling)
        # Under torchrun a rank whose groups were all dropped cannot sit out the update's collectives alone.
        if dist.all_reduce_max(float(rollout is None)) == 0 and \
                dist.all_reduce_max(float(self._has_signal(rollout))) > 0:
            metrics.update(self.update(rollout))
            with self._timed("sync"):  # the rollout engine takes the new weights (whole, under FSDP too)
                self.engine.update_weights(generation_model(self.policy, self.dtype))
        else:
            self._skip_update(metrics)
        self._update_curriculum(sampled)
        metrics.update(gen_seconds=t_gen, train_seconds=time.time() - t0 - t_gen)
        metrics.update({f"time/{phase}": s for phase, s in self.seconds.items()})
        self.state["step"] += 1
        if self.curriculum is not None:
            metrics.update(self.curriculum.log(self.state["curriculum"]))
        return metrics

    def _has_signal(self, rollout: Rollout | None) -> bool:
        """False when no sample has a non-zero advantage: GRPO/RLOO with every group's rewards equal and
        no KL term. PPO's value baseline always leaves a signal."""
        cfg = self.cfg
        if rollout is None:
            return False
        if not self.estimator.groups or (cfg.kl_coef > 0 and self.kl_in == "loss"):
            return True
        return not bool(zero_variance_groups(rollout.rewards, cfg.group_size).all())

    def _skip_update(self, metrics: dict) -> None:
        """No optimizer step: with all-zero gradients Adam would still move every weight by its momentum
        (about lr per weight for several steps), a drift in the direction of stale, noisy gradients.
        The schedule still advances (it counts RL steps); torch warns about that order, on purpose here."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.sched.step()
        metrics["skipped_update"] = 1.0

    def _update_curriculum(self, rollout: Rollout | None) -> None:
        """Every sampled group, flat ones included: the easy and the hopeless problems are what a
        curriculum most needs to see."""
        if self.curriculum is None:
            return
        mine = (rollout.indices, rollout.rewards.tolist()) if rollout is not None else ([], [])
        stats = curriculum_stats(dist.all_gather_object(mine), self.cfg.group_size, self.state["step"])
        self.state["curriculum"] = self.curriculum.update(self.state["curriculum"], stats)


def train_rl(loop: RLLoop, progress: bool = True) -> dict:
    loop.resume()
    cfg = loop.cfg
    bar = tqdm(total=cfg.steps, initial=loop.state["step"], desc=loop.stage, unit="step", dynamic_ncols=True,
               disable=not progress or not dist.is_main())
    last: dict[str, float] = loop.state.get("last", {})
    while loop.state["step"] < cfg.steps:
        last = loop.step()
        loop.state["last"] = last  # checkpointed with the step: a resume after the last step still reports it
        done = loop.state["step"]
        if loop.eval_fn is not None and done % cfg.eval_every == 0:
            t0 = time.perf_counter()
            last["eval_top1"] = loop.eval_fn(done)
            last["time/eval"] = time.perf_counter() - t0
        if loop.store is not None and dist.is_main():
            loop.store.log_metrics(loop.stage, done, last)
        if done % cfg.save_every == 0 or done == cfg.steps:
            loop.save()
            dist.barrier()
        bar.set_postfix(reward=f"{last.get('reward_mean', float('nan')):.3f}",
                        gen=f"{last['gen_seconds']:.0f}s", train=f"{last['train_seconds']:.0f}s")
        bar.update(1)
    bar.close()
    return {"final_loss": last.get("loss"), "final_reward": last.get("reward_mean"), "steps": cfg.steps}
