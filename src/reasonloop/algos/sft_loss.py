"""Token-level SFT objectives, all drop-in replacements for ``-log p_t`` (METHODS.md §1).

``p_t`` is the model's probability of the target token. Each loss maps (logp, mask) to a per-token
loss and the mask it applies to; ``sft_loss`` then reduces with ``aggregate``.

- ``nll``: ``-log p`` (standard next-token loss).
- ``dft``: ``-sg(p) * log p`` (Dynamic Fine-Tuning; "On the Generalization of SFT: A Reinforcement
  Learning Perspective with Reward Rectification"): the gradient is NLL's scaled by p per token.
- ``asft``: DFT + ``beta * KL(pi_theta || pi_ref)`` per token ("Anchored Supervised Fine-Tuning");
  the KL to the frozen start model keeps DFT from drifting.
- ``profit``: ``-log p`` only on tokens with ``p >= tau`` ("ProFit: Leveraging High-Value Signals in SFT
  via Probability-Guided Token Selection"); the others leave the mask.
- ``prob``: ``-p**k`` ("Beyond Log Likelihood: Probability-Based Objectives for SFT across the Model
  Capability Continuum"): better than NLL when the model is already strong on the task. Its gradient is
  ``k * p**k`` times NLL's per token, so ``k = 1`` trains exactly as ``dft`` does (same gradient, other
  loss values); ``k < 1`` lies between NLL and DFT.
"""

from __future__ import annotations

from typing import Callable

import torch

from reasonloop.algos.aggregate import aggregate_parts, masked_mean


def nll_loss(logp, mask, **_):
    return -logp, mask


def dft_loss(logp, mask, **_):
    return -logp.detach().exp() * logp, mask


def asft_loss(logp, mask, *, kl=None, beta=0.05, **_):
    if kl is None:
        raise ValueError("sft_loss 'asft' needs kl: the per-token KL(pi_theta || pi_ref) to the frozen "
                         "start model, [B, T] like logp (token_logprobs(..., ref_hidden=...) gives it)")
    if kl.shape != logp.shape:
        raise ValueError(f"sft_loss 'asft': kl must have logp's shape {tuple(logp.shape)}; "
                         f"got {tuple(kl.shape)}")
    per_token, _ = dft_loss(logp, mask)
    return per_token + beta * kl, mask


def profit_loss(logp, mask, *, tau=0.1, **_):
    keep = mask.bool() & (logp.detach().exp() >= tau)  # [B, T]: a threshold, so no gradient through p
    return -logp, keep


def prob_loss(logp, mask, *, k=1.0, **_):
    return -(logp * k).exp(), mask  # p**k computed in log space: exp(k * log p)


# Config's SftStage.objective picks one of these by name.
SFT_LOSSES: dict[str, Callable] = {
    "nll": nll_loss,
    "dft": dft_loss,
    "asft": asft_loss,
    "profit": profit_loss,
    "prob": prob_loss,
}


def sft_loss(name: str, logp: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None = None,
             beta: float = 0.05, tau: float = 0.1, k: float = 1.0, mode: str = "token_mean",
             norm_const: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics of objective ``name`` for target-token log-probs ``logp`` [B, T].

    Metrics (0-dim, detached): ``nll`` and ``p_mean`` over all response tokens, ``kept_frac`` (share of
    response tokens the loss trains on: < 1 only for ``profit``), ``kl`` for ``asft``, and ``denominator``:
    what the loss was divided by (`aggregate_parts`). A loop that splits a step into micro-batches
    back-propagates ``loss * denominator`` of each and divides the gradient by the step's summed
    denominator, so the step's gradient does not depend on the split (ProFit's kept tokens included).
    """
    if name not in SFT_LOSSES:
        raise ValueError(f"sft_loss: unknown objective {name!r}; expected one of {', '.join(SFT_LOSSES)}")
    if logp.shape != mask.shape:
        raise ValueError(f"sft_loss: logp and mask shapes differ: {tuple(logp.shape)} vs {tuple(mask.shape)}")
    per_token, loss_mask = SFT_LOSSES[name](logp, mask, kl=kl, beta=beta, tau=tau, k=k)  # [B, T] each
    numerator, denominator = aggregate_parts(per_token, loss_mask, mode, norm_const)
    loss = numerator / denominator.clamp(min=1)
    with torch.no_grad():
        n_tokens = mask.bool().sum().clamp(min=1)
        metrics = {
            "nll": masked_mean(-logp, mask),
            "p_mean": masked_mean(logp.exp(), mask),
            "kept_frac": loss_mask.bool().sum() / n_tokens,
            "denominator": denominator.detach(),
        }
        if kl is not None:
            metrics["kl"] = masked_mean(kl, mask)
    return loss, metrics
