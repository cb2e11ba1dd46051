"""The RL minibatch loss: one pure function for every estimator (policy clip, optional KL loss term,
optional value loss), so the RL loop has no per-algorithm branches."""

from __future__ import annotations

import torch

from reasonloop.algos.aggregate import aggregate, masked_mean
from reasonloop.algos.policy import clipped_policy_loss, clipped_value_loss


def rl_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
            clip_low: float = 0.2, clip_high: float = 0.2, mode: str = "token_mean",
            norm_const: float | None = None, kl: torch.Tensor | None = None, kl_coef: float = 0.0,
            values: torch.Tensor | None = None, old_values: torch.Tensor | None = None,
            returns: torch.Tensor | None = None, value_clip: float = 0.2, vf_coef: float = 1.0
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss on token log-probs [B, T] with ``advantages`` [B] or [B, T]; plus
    ``kl_coef * aggregate(kl)`` when the per-token KL estimate ``kl`` [B, T] is a loss term (kl_coef 0:
    it is only reported, e.g. because it is already in the reward); plus ``vf_coef`` times the clipped
    value loss when ``values`` (with ``old_values`` and ``returns``) are given.

    Metrics (0-dim, detached): ``policy_loss``, ``clip_frac``, and ``kl`` / ``value_loss``,
    ``vf_clip_frac`` when those parts are present.
    """
    loss, pm = clipped_policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, mode=mode,
                                   norm_const=norm_const)
    metrics = {"policy_loss": loss.detach(), "clip_frac": pm["clip_frac"]}
    if kl is not None:
        metrics["kl"] = masked_mean(kl.detach(), mask)
        if kl_coef:
            loss = loss + kl_coef * aggregate(kl, mask, mode, norm_const)
    if values is not None:
        if old_values is None or returns is None:
            raise ValueError("rl_loss: a value loss needs old_values and returns beside values")
        value_loss, vm = clipped_value_loss(values, old_values, returns, mask, value_clip, mode=mode,
                                            norm_const=norm_const)
        loss = loss + vf_coef * value_loss
        metrics.update(value_loss=value_loss.detach(), vf_clip_frac=vm["vf_clip_frac"])
    return loss, metrics
