"""Batched token sampling: temperature, top-k, top-p (nucleus), min-p; log-probs of the chosen tokens.

Pure tensor functions shared by every torch-side engine path. Filtering follows the usual definitions:
top-k keeps the k most likely tokens; top-p keeps the smallest set whose probability reaches p
(Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"); min-p keeps tokens whose
probability is at least ``min_p`` times the top token's (Nguyen et al. 2024, "Turning Up the Heat:
Min-p Sampling for Creative and Coherent LLM Outputs").

Seeding: every (prompt, sample) has its own 64-bit key (``prompt_seed``), and the token a row draws at
step t comes from a uniform that depends on (key, t) alone (``step_uniforms``), turned into a token by
inverse-CDF sampling. So a sample does not depend on which other rows share its batch, how many
prompts a call holds, or which process draws it: batch 16 and 64, 1 process and N draw the same
samples for the same seed (up to the rounding of the logits themselves, which fp32 keeps far below the
width of any token's slice of [0, 1)).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
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


def prompt_seed(seed: int, prompt: str | Sequence[int], sample_index: int) -> int:
    """The 64-bit key of sample ``sample_index`` of ``prompt`` (text, or token ids) under ``seed``.

    A hash (BLAKE2b), not Python's ``hash``: it is the same in every process and every run.
    """
    if not isinstance(seed, int) or not isinstance(sample_index, int) or sample_index < 0:
        raise UserError(f"prompt_seed: expected an int seed and sample index >= 0, got {seed!r}, {sample_index!r}")
    body = prompt.encode() if isinstance(prompt, str) else b"ids:" + ",".join(map(str, prompt)).encode()
    digest = hashlib.blake2b(f"{seed}|{sample_index}|".encode() + body, digest_size=8).digest()
    return int.from_bytes(digest, "little")


def default_keys(prompts: list, params: SamplingParams) -> list[list[int]]:
    """Keys [prompts][n] from each prompt's own content and ``params.seed``: what ``generate`` uses
    when the caller passes none."""
    return [[prompt_seed(params.seed, p, j) for j in range(params.n)] for p in prompts]


def check_keys(keys: list[list[int]], n_prompts: int, n: int) -> None:
    """Raise UserError unless ``keys`` holds ``n`` 64-bit ints for each of ``n_prompts`` prompts."""
    if len(keys) != n_prompts or any(len(row) != n for row in keys):
        raise UserError(f"generate keys: expected {n} keys for each of {n_prompts} prompts, got lengths "
                        f"{[len(row) for row in keys][:8]}")
    if any(not isinstance(k, int) or not 0 <= k < 2 ** 64 for row in keys for k in row):
        raise UserError("generate keys: expected ints in [0, 2**64)")


_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def step_uniforms(keys: Sequence[int], steps: Sequence[int]) -> torch.Tensor:
    """One uniform in [0, 1) per row from (key, step) alone: [B] float64.

    Counter-based: the SplitMix64 output (Steele et al. 2014, "Fast Splittable Pseudorandom Number
    Generators") at position ``step + 1`` of the stream seeded with ``key``; no state to carry, so a
    row's draw is the same whatever else is in the batch.
    """
    k = np.asarray(keys, dtype=np.uint64)
    t = np.asarray(steps, dtype=np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64, as SplitMix64 intends
        z = k + t * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)  # 53 bits -> [0, 1)


def sample_tokens(logits: torch.Tensor, params: SamplingParams,
                  uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits`` [B, V]; return (tokens [B], logprobs [B]).

    ``uniforms`` [B] (``step_uniforms``) pick the tokens by inverse CDF over the filtered distribution:
    row b takes the first token whose cumulative probability exceeds ``uniforms[b]``. Unused (may be
    None) when greedy.

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
    if uniforms is None or uniforms.shape != logits.shape[:1]:
        raise UserError(f"sample_tokens: expected one uniform per row ({logits.shape[0]}), got "
                        f"{None if uniforms is None else tuple(uniforms.shape)}")
    tokens = inverse_cdf(kept.softmax(-1), uniforms.to(logits.device, torch.float64))  # [B]
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


CDF_BLOCK = 256


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row b's first token whose cumulative probability exceeds ``uniforms[b]`` times the row's total:
    [B] long. ``probs`` [B, V] (>= 0, at least one > 0 per row), ``uniforms`` [B] float64 in [0, 1).

    Sums run in float64, whose rounding stays far below any token's probability, so a token's slice of
    [0, 1) is where its probability puts it. Two levels: the cumulative sums of blocks of 256 tokens pick
    the block, then the cumulative sum inside it picks the token. Why: one float64 cumsum over a 49k
    vocabulary took 27 of a 64-row sampling step's 54 ms on a 2-core AVX2 EPYC; with two levels the step
    takes 11 ms. A token with probability 0 (filtered) is never drawn: a block without mass never has its
    cumulative sum exceed the target, and the pick is clamped to the last token with mass (of the row,
    then of the block) for when the two summation orders round the target a hair past a block's end.
    """
    b, v = probs.shape
    if v % CDF_BLOCK:
        probs = torch.nn.functional.pad(probs, (0, CDF_BLOCK - v % CDF_BLOCK))
    blocks = probs.view(b, -1, CDF_BLOCK)  # [B, NB, K]
    sums = blocks.sum(-1, dtype=torch.float64)  # [B, NB]
    cdf = sums.cumsum(-1)
    target = uniforms[:, None] * cdf[:, -1:]  # [B, 1]
    block = torch.minimum(torch.searchsorted(cdf, target, right=True), _last_positive(sums))  # [B, 1]
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp_(min=0)), 0.0)  # mass of earlier blocks
    chosen = blocks.gather(1, block[:, :, None].expand(-1, -1, CDF_BLOCK))[:, 0]  # [B, K]
    inner = chosen.double().cumsum(-1) + before  # [B, K]
    token = torch.minimum(torch.searchsorted(inner, target, right=True), _last_positive(chosen))  # [B, 1]
    return (block * CDF_BLOCK + token)[:, 0]


def _last_positive(values: torch.Tensor) -> torch.Tensor:
    """Index of each row's last entry > 0: [B, 1] long."""
    width = values.shape[-1]
    return width - 1 - (values > 0).flip(-1).int().argmax(-1, keepdim=True)
