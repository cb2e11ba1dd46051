"""Reduction of a per-token loss to a scalar: the one named step every loss goes through.

Three modes, because the choice changes what a long response weighs against a short one:

- ``token_mean``: sum over all response tokens / number of tokens (DAPO, "DAPO: An Open-Source LLM
  Reinforcement Learning System at Scale"; the usual SFT reduction). Every token weighs the same.
- ``seq_mean``: mean over sequences of each sequence's token mean (the GRPO objective as written in
  DeepSeekMath, Shao et al. 2024). Every sequence weighs the same, so tokens of long responses weigh less.
- ``seq_sum_norm``: sum over all tokens / (B * norm_const), a constant such as the maximum response
  length (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"),
  which removes the length bias of ``seq_mean`` without making the scale depend on the batch.
"""

from __future__ import annotations

import torch

AGGREGATE_MODES = ("token_mean", "seq_mean", "seq_sum_norm")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set; masked entries never contribute, even if inf/nan."""
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set; 0 (not nan) when nothing is set."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def aggregate_denominator(mask: torch.Tensor, mode: str = "token_mean", norm_const: float | None = None) -> float:
    """What ``aggregate`` divides by for ``mask`` [B, T]: kept tokens, sequences with a kept token, or
    B * norm_const. A process's share of a distributed batch is its denominator over the global one."""
    return float(aggregate_parts(torch.zeros(mask.shape), mask, mode, norm_const)[1])


def aggregate_parts(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
                    norm_const: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``aggregate`` as (numerator, denominator): summed over the micro-batches of one optimizer step
    (and over processes), numerator / denominator is the whole step's aggregate, however the step was
    split. Denominators: kept tokens (``token_mean``), sequences with a kept token (``seq_mean``),
    ``B * norm_const`` (``seq_sum_norm``)."""
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(f"aggregate: per_token and mask must both be [B, T]; got "
                         f"{tuple(per_token.shape)} and {tuple(mask.shape)}")
    if mode == "token_mean":
        return masked_sum(per_token, mask), mask.bool().sum().to(per_token.dtype)
    if mode == "seq_mean":
        seq_means = masked_mean(per_token, mask, dim=1)  # [B]
        has_tokens = mask.bool().any(dim=1)  # [B]: empty sequences are excluded, not counted as 0
        return masked_sum(seq_means, has_tokens), has_tokens.sum().to(per_token.dtype)
    if mode == "seq_sum_norm":
        if norm_const is None or norm_const <= 0:
            raise ValueError(f"aggregate: mode 'seq_sum_norm' needs a positive norm_const "
                             f"(e.g. the maximum response length); got {norm_const!r}")
        return masked_sum(per_token, mask), torch.tensor(per_token.shape[0] * norm_const, dtype=per_token.dtype)
    raise ValueError(f"aggregate: unknown mode {mode!r}; expected one of {', '.join(AGGREGATE_MODES)}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
              norm_const: float | None = None) -> torch.Tensor:
    """Reduce ``per_token`` [B, T] over the positions where ``mask`` [B, T] is set to a 0-dim tensor.

    An empty mask gives 0 rather than nan, so a micro-batch with nothing to learn (e.g. every token
    filtered out by ProFit) adds no gradient instead of poisoning the step.
    """
    numerator, denominator = aggregate_parts(per_token, mask, mode, norm_const)
    return numerator / denominator.clamp(min=1)
