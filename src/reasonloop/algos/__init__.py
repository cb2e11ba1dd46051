"""Pure tensor functions for the training loops: explicit tensor arguments, no config objects, no
``.item()``, no knowledge of distribution. Losses return ``(loss, metrics)`` with metrics as detached
0-dim tensors (callers call ``.item()``); reduction is its own step (``aggregate``).

- ``aggregate``: per-token loss -> scalar (token_mean, seq_mean, seq_sum_norm).
- ``sft_loss``: token-level SFT objectives (nll, dft, asft, profit, prob) and their registry.
- ``advantages``: GAE, GRPO group advantages, RLOO, whitening, zero-variance groups.
- ``policy``: PPO clipped policy loss (separate low/high clip) and clipped value loss.
- ``kl``: per-token KL estimators k1/k2/k3 and the exact KL from logits.
- ``logprobs``: target-token log-probs (and entropy, KL to a reference) through the LM head, chunked
  with a recomputing backward so full-vocabulary logits never exist for all positions at once.
"""

from reasonloop.algos.advantages import gae, group_advantages, leave_one_out, whiten, zero_variance_groups
from reasonloop.algos.aggregate import AGGREGATE_MODES, aggregate, masked_mean, masked_sum
from reasonloop.algos.kl import KL_ESTIMATORS, full_kl, kl_penalty
from reasonloop.algos.logprobs import token_logprobs, token_logprobs_full
from reasonloop.algos.policy import clipped_policy_loss, clipped_value_loss
from reasonloop.algos.sft_loss import SFT_LOSSES, sft_loss

__all__ = [
    "AGGREGATE_MODES", "KL_ESTIMATORS", "SFT_LOSSES", "aggregate", "clipped_policy_loss",
    "clipped_value_loss", "full_kl", "gae", "group_advantages", "kl_penalty", "leave_one_out",
    "masked_mean", "masked_sum", "sft_loss", "token_logprobs", "token_logprobs_full", "whiten",
    "zero_variance_groups",
]
