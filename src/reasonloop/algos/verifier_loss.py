"""The verifier's objective (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems").

A scalar head reads the backbone's hidden state and predicts whether a sampled solution's final answer
is right. `outcome`: one prediction per solution, at its last token. `token`: a prediction after every
response token, each trained towards the solution's label, as Cobbe et al.'s token-level verifier (a value
function: "how likely is a solution that got this far to end correct"); it is read at the last token too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def verifier_loss(logits: torch.Tensor, labels: torch.Tensor, seq_of: torch.Tensor, is_last: torch.Tensor,
                  objective: str = "outcome") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Binary cross-entropy of verifier logits against correctness labels; each solution weighs the same.

    logits [n]: scores at the scored positions of S packed solutions; labels [S] (1.0 right, 0.0 wrong);
    seq_of [n] long: the solution each position belongs to; is_last [n] bool: each solution's last token
    (exactly one per solution). `outcome` uses the last positions only; `token` averages the per-token loss
    within each solution first, then over solutions. Returns (loss, metrics); metrics hold `accuracy` (last
    positions, threshold logit 0) and `denominator` (S), detached.
    """
    num_seqs = labels.shape[0]
    if int(is_last.sum()) != num_seqs:
        raise ValueError(f"verifier_loss: {int(is_last.sum())} last positions for {num_seqs} solutions")
    last_logits = logits[is_last]  # [S], in sequence order
    if objective == "outcome":
        loss = F.binary_cross_entropy_with_logits(last_logits, labels)
    elif objective == "token":
        per_token = F.binary_cross_entropy_with_logits(logits, labels[seq_of], reduction="none")  # [n]
        sums = torch.zeros(num_seqs, dtype=per_token.dtype, device=per_token.device).index_add(0, seq_of, per_token)
        counts = torch.bincount(seq_of, minlength=num_seqs).to(per_token.dtype)  # [S]
        loss = (sums / counts).mean()
    else:
        raise ValueError(f"verifier_loss: objective must be 'outcome' or 'token', got {objective!r}")
    accuracy = ((last_logits > 0).to(labels.dtype) == labels).float().mean()
    return loss, {"accuracy": accuracy.detach(), "denominator": torch.tensor(float(num_seqs))}
