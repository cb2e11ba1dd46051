"""Per-token KL(pi_theta || pi_ref) from log-probs of sampled tokens, and the exact KL from logits.

The sampled-token estimators are John Schulman's "Approximating KL Divergence" (2020). With
``log_ratio = ref_logp - logp`` for a token drawn from pi_theta:

- ``k1 = -log_ratio``: unbiased, high variance, can be negative (the PPO/ReFT reward penalty).
- ``k2 = log_ratio**2 / 2``: biased, low variance, always >= 0.
- ``k3 = exp(log_ratio) - log_ratio - 1``: unbiased, low variance, always >= 0 (GRPO, DeepSeekMath).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref), same shape as ``logp`` (e.g. [B, T])."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_penalty: unknown estimator {estimator!r}; expected one of "
                         f"{', '.join(KL_ESTIMATORS)}")
    log_ratio = ref_logp - logp  # [B, T]
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    return torch.expm1(log_ratio) - log_ratio  # k3; expm1 keeps precision when the ratio is near 1


def full_kl(logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact KL(softmax(logits) || softmax(ref_logits)) over the last dim: [..., V] -> [...].

    Materialises full-vocabulary log-probs: for long inputs use ``token_logprobs`` (chunked) instead.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits: softmax in fp32
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)  # [..., V]
    ref = torch.log_softmax(ref_logits.to(dtype) / temperature, dim=-1)  # [..., V]
    return (logp.exp() * (logp - ref)).sum(-1)
