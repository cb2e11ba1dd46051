"""Clipped surrogate losses for the policy and the value head.

- ``clipped_policy_loss``: PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), with
  separate lower and upper clip ranges ("clip-higher", DAPO: "An Open-Source LLM Reinforcement Learning
  System at Scale", Yu et al. 2025). GRPO and RLOO use it with their own advantages.
- ``clipped_value_loss``: PPO's clipped value objective as in ReFT and the OpenAI baselines:
  0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, -c, c).
"""

from __future__ import annotations

import torch

from reasonloop.algos.aggregate import aggregate, masked_mean


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                        mode: str = "token_mean", norm_const: float | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss from token log-probs [B, T] under the current and the sampling policy.

    ``advantages`` is [B, T] (GAE) or [B] (one per sequence: GRPO, RLOO), broadcast over tokens.
    Metrics (0-dim, token means over ``mask``): ``clip_frac`` (share of tokens whose clipped term is the
    active one, i.e. that get no gradient), ``approx_kl`` (k3 estimate of KL(pi_old || pi_theta)),
    ``ratio_mean``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [B, 1], broadcast over T
    if not (logp.shape == old_logp.shape == mask.shape):
        raise ValueError(f"clipped_policy_loss: logp, old_logp, mask must share a shape; got "
                         f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}")
    log_ratio = logp - old_logp.detach()  # [B, T]
    ratio = log_ratio.exp()  # [B, T]
    adv = advantages.detach()
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    per_token = torch.maximum(unclipped, clipped)  # pessimistic bound: max of the two losses
    loss = aggregate(per_token, mask, mode, norm_const)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float = 0.2, mode: str = "token_mean",
                       norm_const: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss from value predictions [B, T], the rollout's predictions and GAE returns.

    Metric ``vf_clip_frac``: share of tokens where the clipped error is the larger (active) one.
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError(f"clipped_value_loss: values, old_values, returns, mask must share a shape; got "
                         f"{tuple(values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}, "
                         f"{tuple(mask.shape)}")
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
    err = (values - returns).square()  # [B, T]
    err_clipped = (v_clipped - returns).square()  # [B, T]
    per_token = 0.5 * torch.maximum(err, err_clipped)
    loss = aggregate(per_token, mask, mode, norm_const)
    with torch.no_grad():
        metrics = {"vf_clip_frac": masked_mean((err_clipped > err).to(values.dtype), mask)}
    return loss, metrics
