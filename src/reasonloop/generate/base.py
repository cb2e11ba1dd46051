"""The one small interface every rollout engine implements (torch built-in, vLLM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy; stored with every evaluation number."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Sample:
    """One sampled continuation of one prompt."""

    prompt_index: int
    token_ids: list[int]  # generated tokens only; includes the EOS token when finish_reason == "eos"
    logprobs: list[float]  # log-prob of each generated token under the sampling policy (after temperature)
    finish_reason: FinishReason
    text: str = ""  # decoded token_ids, cut before the stop string when finish_reason == "stop"
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, progress: bool = True,
        keys: list[list[int]] | None = None,
    ) -> list[list[Sample]]:
        """For each prompt (token ids), ``params.n`` samples, in prompt order. ``keys[i][j]`` seeds sample j
        of prompt i on its own (``sampling.prompt_seed``; default: from the prompt's ids and
        ``params.seed``), so a sample does not depend on the rest of the batch."""
        ...

    def update_weights(self, model) -> None:
        """Load the current policy weights (after a training step) into the engine."""
        ...
