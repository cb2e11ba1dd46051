"""Advantage estimators for RL on verifiable rewards.

- ``gae``: Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
  Using Generalized Advantage Estimation"); PPO with a value head as in ReFT (gamma 1.0, lambda 0.95).
- ``group_advantages``: GRPO (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical
  Reasoning in Open Language Models"): (r - group mean) / (group std + eps). ``scale_std=False`` is
  Dr. GRPO's fix (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective").
- ``leave_one_out``: RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
  Optimization for Learning from Human Feedback in LLMs"): baseline = mean of the other G-1 rewards.
- ``zero_variance_groups``: groups whose rewards are all equal carry no signal (DAPO's dynamic sampling).

Groups are consecutive: rewards [N] with N = num_prompts * G, prompt i owning rows i*G .. i*G+G-1.
"""

from __future__ import annotations

import torch

from reasonloop.algos.aggregate import masked_mean, masked_sum


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns (= advantages + values), both [B, T], 0 where ``mask`` is unset.

    ``rewards`` [B, T] are per token (e.g. -kl_coef * KL on every token plus the score on the last one).
    Masked positions are skipped, not treated as steps: the value and advantage carried back across them
    are those of the next response token, so padding or inserted tool output does not discount.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(f"gae: rewards, values, mask must all be [B, T]; got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    with torch.no_grad():  # advantages are targets, never differentiated through
        m = mask.to(values.dtype)  # [B, T]
        next_value = torch.zeros_like(values[:, 0])  # [B]
        last_gae = torch.zeros_like(values[:, 0])  # [B]
        advantages = torch.zeros_like(values)  # [B, T]
        for t in reversed(range(values.shape[1])):
            delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
            step_gae = delta + gamma * lam * last_gae  # [B]
            # where mask is 0, carry the previous (later) value and advantage through unchanged
            next_value = m[:, t] * values[:, t] + (1 - m[:, t]) * next_value
            last_gae = m[:, t] * step_gae + (1 - m[:, t]) * last_gae
            advantages[:, t] = last_gae
        advantages = advantages * m
        returns = (advantages + values) * m
    return advantages, returns


def _groups(rewards: torch.Tensor, group_size: int, who: str) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"{who}: rewards must be [N] (one per sample); got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{who}: need group_size >= 2 dividing the number of rewards; got "
                         f"group_size={group_size} for {rewards.numel()} rewards")
    return rewards.view(-1, group_size)  # [N/G, G]


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantage per sample [N]: reward minus its group's mean, divided by the group's std.

    The std is the sample std (Bessel-corrected), as in TRL's and verl's GRPO. A group whose rewards are
    all equal gets advantage 0.
    """
    g = _groups(rewards, group_size, "group_advantages").float()  # [N/G, G]
    centred = g - g.mean(dim=1, keepdim=True)  # [N/G, G]
    if scale_std:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1).to(rewards.dtype)


def leave_one_out(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantage per sample [N]: reward minus the mean reward of the other G-1 samples of its group."""
    g = _groups(rewards, group_size, "leave_one_out").float()  # [N/G, G]
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)  # [N/G, G]
    return (g - baseline).reshape(-1).to(rewards.dtype)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool [N/G]: True for groups whose rewards are all equal (no learning signal: drop or resample)."""
    g = _groups(rewards, group_size, "zero_variance_groups")  # [N/G, G]
    return g.amax(dim=1) == g.amin(dim=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to unit variance over the masked entries (and zero mean if ``shift_mean``).

    Statistics over the masked entries only, variance Bessel-corrected (as in TRL/verl ``masked_whiten``);
    masked-out entries come back as 0. Works for any shape, e.g. advantages [B, T].
    """
    if values.shape != mask.shape:
        raise ValueError(f"whiten: values and mask shapes differ: {tuple(values.shape)} vs "
                         f"{tuple(mask.shape)}")
    keep = mask.bool()
    n = keep.sum()  # 0-dim; no .item(), so no device sync
    mean = masked_mean(values, keep)
    var = masked_sum((values - mean).square(), keep) / (n - 1).clamp(min=1)  # one entry: var 0, output 0
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(keep, out, torch.zeros_like(out))
