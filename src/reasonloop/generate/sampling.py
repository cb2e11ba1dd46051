"""Batched token sampling: temperature, top-k, top-p (nucleus), min-p; log-probs of the chosen tokens.

Pure tensor functions shared by every torch-side engine path. Filtering follows the usual definitions:
top-k keeps the k most likely tokens; top-p keeps the smallest set whose probability reaches p
(Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"); min-p keeps tokens whose
probability is at least ``min_p`` times the top token's (Nguyen et al. 2024, "Turning Up the Heat:
Min-p Sampling for Creative and Coherent LLM Outputs").
"""

from __future__ import annotations

import torch

from reasonloop.errors import UserError
from reasonloop.generate.base import SamplingParams


def check_params(params: SamplingParams) -> None:
    """Raise UserError naming the field for settings no engine can honour."""
    if params.n < 1:
        raise UserError(f"sampling n: expected >= 1, got {params.n}")
    if params.temperature < 0:
        raise UserError(f"sampling temperature: expected >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise UserError(f"sampling top_p: expected 0 < top_p <= 1, got {params.top_p}")
    if params.top_k < 0:
        raise UserError(f"sampling top_k: expected >= 0 (0 = off), got {params.top_k}")
    if not 0 <= params.min_p < 1:
        raise UserError(f"sampling min_p: expected 0 <= min_p < 1, got {params.min_p}")
    if params.max_new_tokens < 1:
        raise UserError(f"sampling max_new_tokens: expected >= 1, got {params.max_new_tokens}")
    if any(not s for s in params.stop):
        raise UserError("sampling stop: empty stop string")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> torch.Tensor:
    """Set the logits of tokens outside top-k / top-p / min-p to -inf. ``logits``: [B, V] (already / T).

    The filters apply in vLLM's order (top-k, then top-p, then min-p on the top-k/top-p survivors'
    renormalised distribution); the most likely token always survives.
    """
    out = logits
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]  # [B, 1]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass of the tokens strictly before it already reaches top_p.
        before = probs.cumsum(-1) - probs  # [B, V]
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = out.softmax(-1)  # [B, V]
        cutoff = probs.max(-1, keepdim=True).values * min_p  # [B, 1]
        out = out.masked_fill(probs < cutoff, float("-inf"))
    return out


def sample_tokens(logits: torch.Tensor, params: SamplingParams,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits`` [B, V]; return (tokens [B], logprobs [B]).

    Log-probs are of the chosen token under log_softmax(logits / T) -- the temperature-scaled
    distribution *before* top-k/top-p/min-p truncation, which is what a teacher-forced forward at
    the same temperature gives and what RL ratios use. Greedy (T == 0) returns log_softmax(logits).
    """
    logits = logits.float()
    if params.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)  # [B, V]
        tokens = logp.argmax(-1)  # [B]
        return tokens, logp.gather(-1, tokens[:, None])[:, 0]
    scaled = logits / params.temperature  # [B, V]
    logp = torch.log_softmax(scaled, dim=-1)
    kept = filter_logits(scaled, params.top_k, params.top_p, params.min_p)
    probs = kept.softmax(-1)  # [B, V]
    # Exponential race (Gumbel-max with exp noise): argmax p / E is a draw from p, one kernel, no sort.
    noise = torch.empty_like(probs).exponential_(generator=generator)
    tokens = (probs / noise).argmax(-1)  # [B]
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]
