"""One RL rollout batch: prompts, sampled completions, rewards, and the per-token tensors of the update.

Everything per token lives in the padded [S, L] layout of the packed batch (reasonloop.packing):
row i is sample i, column t is the position that predicts completion token t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reasonloop import dist

from reasonloop.algos.advantages import zero_variance_groups
from reasonloop.algos.logprobs import token_logprobs
from reasonloop.models import backbone_and_head
from reasonloop.packing import PackedBatch, pack_sequences, packed_hidden
from reasonloop.tasks.base import Problem


@dataclass
class Rollout:
    problems: list[Problem]  # one per sample (each prompt repeated G times, groups consecutive)
    indices: list[int]  # problem index in the stage's pool, per sample
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finish: list[str]
    rewards: torch.Tensor  # [N]
    correct: list[bool]
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, keep: list[int]) -> "Rollout":
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return Rollout(pick(self.problems), pick(self.indices), pick(self.prompt_ids), pick(self.completion_ids),
                       pick(self.texts), pick(self.finish), self.rewards[keep], pick(self.correct), dict(self.extra))

    @staticmethod
    def concat(parts: list["Rollout"]) -> "Rollout":
        cat = lambda name: sum((getattr(p, name) for p in parts), [])  # noqa: E731
        return Rollout(cat("problems"), cat("indices"), cat("prompt_ids"), cat("completion_ids"), cat("texts"),
                       cat("finish"), torch.cat([p.rewards for p in parts]), cat("correct"))


def pack_rollout(rollout: Rollout, rows: list[int], device="cpu") -> PackedBatch:
    seqs = [rollout.prompt_ids[i] + rollout.completion_ids[i] for i in rows]
    # The G samples of a group share their prompt: its tokens go through the model once, not G times.
    return pack_sequences(seqs, [len(rollout.prompt_ids[i]) for i in rows], device=device, share_prompts=True)


def plan_micro_batches(rollout: Rollout, rows: list[int], budget: int) -> list[list[int]]:
    """Split ``rows`` into micro-batches of at most ``budget`` packed tokens (a row longer than that goes
    alone). Rows of one prompt stay together where they fit, and their prompt counts once, as packing
    with shared prompts lays it out."""
    rows = sorted(rows, key=lambda r: (rollout.prompt_ids[r], r))  # the samples of a prompt side by side
    plan: list[list[int]] = []
    cur: list[int] = []
    used, seen = 0, set()
    for r in rows:
        prompt = tuple(rollout.prompt_ids[r])
        cost = len(rollout.completion_ids[r]) + (0 if prompt in seen else len(prompt))
        if cur and used + cost > budget:
            plan.append(cur)
            cur, used, seen = [], 0, set()
            cost = len(rollout.completion_ids[r]) + len(prompt)
        cur.append(r)
        used += cost
        seen.add(prompt)
    if cur:
        plan.append(cur)
    return plan


def completion_mask(rollout: Rollout, rows: list[int]) -> torch.Tensor:
    """[B, T] mask of the completion tokens of ``rows``: what a loss over them aggregates."""
    lens = torch.tensor([len(rollout.completion_ids[r]) for r in rows])
    return torch.arange(int(lens.max()) if len(rows) else 0)[None, :] < lens[:, None]


def to_rows(batch: PackedBatch, values: torch.Tensor) -> torch.Tensor:
    """Values at trained positions [n] -> [S, L] (0 elsewhere)."""
    out = torch.zeros(batch.num_seqs * batch.max_len, dtype=values.dtype, device=values.device)
    return out.index_put((batch.pred_slots,), values).view(batch.num_seqs, batch.max_len)


def row_mask(batch: PackedBatch) -> torch.Tensor:
    return to_rows(batch, torch.ones(len(batch.targets), device=batch.dest.device)).bool()


def policy_stats(model, batch: PackedBatch, temperature: float, with_entropy: bool = False,
                 value_head=None) -> dict[str, torch.Tensor]:
    """Per-token log-probs (under the sampling temperature), entropy and values, each [S, L]."""
    hidden = packed_hidden(model, batch)  # [N, H]
    _, head = backbone_and_head(model)
    h = hidden[batch.pred_index]  # [n, H]
    stats = token_logprobs(h, head, batch.targets, temperature=temperature, with_entropy=with_entropy)
    out = {k: to_rows(batch, v) for k, v in stats.items()}
    if value_head is not None:
        out["values"] = to_rows(batch, value_head(h.to(value_head.weight.dtype)).squeeze(-1))
    return out


def last_token_scores(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sample's scalar reward [S] on its last completion token: [S, L] (ReFT's reward shape)."""
    last = mask.long().cumsum(1).argmax(1)  # [S]: index of the last True in each row
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    out[torch.arange(mask.shape[0], device=mask.device), last] = rewards
    return out * mask


def rollout_metrics(rollout: Rollout | None, sampled: Rollout | None, G: int, dynamic_sampling: bool) -> dict[str, float]:
    """Reward and accuracy over every sampled rollout (flat groups included: dropping them first
    would bias the mean towards 0.5), the share of groups whose rewards are all equal (no GRPO/RLOO
    signal), and how many samples the update trained on."""
    n = float(len(sampled)) if sampled is not None else 0.0
    flat = float(zero_variance_groups(sampled.rewards, G).sum()) if sampled is not None and G > 1 else 0.0
    totals = dist.sum_metrics({
        "sampled": n, "groups": n / G, "flat_groups": flat,
        "trained": float(len(rollout)) if rollout is not None else 0.0,
        "reward": sampled.rewards.sum().item() if n else 0.0,
        "correct": float(sum(sampled.correct)) if n else 0.0,
        "tokens": float(sum(map(len, sampled.completion_ids))) if n else 0.0})
    out = {"samples": totals["sampled"], "trained_samples": totals["trained"],
           "flat_groups": totals["flat_groups"],
           "flat_share": totals["flat_groups"] / max(totals["groups"], 1.0),
           "dropped_groups": (totals["sampled"] - totals["trained"]) / G if dynamic_sampling else 0.0}
    if totals["sampled"]:
        out.update(reward_mean=totals["reward"] / totals["sampled"],
                   accuracy=totals["correct"] / totals["sampled"],
                   response_tokens=totals["tokens"] / totals["sampled"])
    return out


def curriculum_stats(parts: list[tuple[list[int], list[float]]], G: int, step: int):
    """What the curriculum learns from one step: every rank's (problem indices, rewards) merged into each
    problem's mean reward, sample count and |advantage| (the mean absolute deviation of its rewards,
    SEC's learning signal; None when G = 1)."""
    from reasonloop.curriculum import BatchStats

    per_problem: dict[int, list[float]] = {}
    for indices, rewards in parts:
        for i, r in zip(indices, rewards):
            per_problem.setdefault(i, []).append(r)
    means = [sum(v) / len(v) for v in per_problem.values()]
    abs_adv = [sum(abs(x - m) for x in v) / len(v) for v, m in zip(per_problem.values(), means)] \
        if G > 1 else None
    return BatchStats(indices=list(per_problem), rewards=means, abs_advantages=abs_adv, step=step,
                      samples=[len(v) for v in per_problem.values()])
