"""Bookkeeping every engine shares: which ids end a sequence, a sequence in flight, when it finishes and
what `Sample` it becomes, and the progress bar. No engine imports another engine for these."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from reasonloop.generate.base import FinishReason, Sample, SamplingParams
from reasonloop.models import unwrap


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the generation config's (int or list)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(unwrap(model), "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


@dataclass
class Seq:
    prompt_index: int
    sample_index: int
    pos: int  # tokens already in the KV cache (prompt + generated, minus the last sampled token)
    key: int = 0  # this sample's random stream (sampling.prompt_seed); its token t draws step_uniforms(key, t)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None


def draw(seqs: list[Seq], logits, params: SamplingParams, finisher: "Finisher") -> None:
    """Sample each sequence's next token from its row of ``logits`` [B, V] with its own stream, append it
    and its log-prob, and check whether the sequence has finished."""
    from reasonloop.generate.sampling import sample_tokens, step_uniforms

    uniforms = None if params.temperature == 0 else step_uniforms([s.key for s in seqs],
                                                                  [len(s.tokens) for s in seqs])
    new, logp = sample_tokens(logits, params, uniforms)
    for seq, tok, lp in zip(seqs, new.tolist(), logp.tolist()):
        seq.tokens.append(tok)
        seq.logprobs.append(lp)
        finisher.check(seq)


class Finisher:
    """Decides when a sequence ends (EOS / stop string / length) and builds its ``Sample``."""

    def __init__(self, tokenizer, eos: set[int], params: SamplingParams):
        self.tokenizer, self.eos, self.params = tokenizer, eos, params
        # A stop string spans at most this many trailing tokens (a token decodes to >= 1 char, and
        # byte-fallback pieces need a few extra), so only the tail is decoded each step.
        self.tail = max((len(s) for s in params.stop), default=0) + 8

    def check(self, seq: Seq) -> None:
        token = seq.tokens[-1]
        if token in self.eos:
            seq.finish = "eos"
        elif self.params.stop and any(s in self.tokenizer.decode(seq.tokens[-self.tail:])
                                      for s in self.params.stop):
            seq.finish = "stop"
        elif len(seq.tokens) >= self.params.max_new_tokens:
            seq.finish = "length"

    def sample(self, seq: Seq) -> Sample:
        text = self.tokenizer.decode(seq.tokens, skip_special_tokens=True)
        if seq.finish == "stop":
            cuts = [text.find(s) for s in self.params.stop if s in text]
            text = text[:min(cuts)] if cuts else text
        return Sample(prompt_index=seq.prompt_index, token_ids=list(seq.tokens),
                      logprobs=list(seq.logprobs), finish_reason=seq.finish, text=text)


class Progress:
    """tqdm bar: samples done, useful tokens/s. A no-op when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.tokens, self.start, self.last = 0, time.perf_counter(), 0.0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="sample", desc="generate", dynamic_ncols=True)

    def update(self, samples: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is None:
            return
        self.bar.update(samples)
        now = time.perf_counter()
        if now - self.last > 0.5:
            self.bar.set_postfix_str(f"{self.tokens / max(now - self.start, 1e-9):.0f} tok/s")
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.0f} tok/s")
            self.bar.close()
