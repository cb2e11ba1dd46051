"""The built-in torch engine: continuous batching over a preallocated KV cache, shared prompt prefill.

Scheduling follows Orca (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based
Generative Models"): the batch is re-formed every decode step, a finished sequence leaves at once and
queued work takes its slot, so no compute goes to finished rows. Each distinct prompt is prefilled once
and its KV copied into the slots of its ``n`` samples. Llama-family models run on ``LlamaFast``; other
architectures use the HF forward in waves (``hf_path``).
"""

from __future__ import annotations

from collections import deque

import torch

from reasonloop.errors import UserError
from reasonloop.generate.base import Sample, SamplingParams
from reasonloop.generate.bookkeeping import Finisher, Progress, Seq, draw, eos_ids
from reasonloop.generate.llama_fast import LlamaFast, supports_fast_path
from reasonloop.generate.sampling import check_keys, check_params, default_keys


PREFILL_TOKENS = 1024  # at most this many prompt tokens per prefill forward (TorchEngine._prefill)


def common_prefix_len(prompts: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving every prompt at least one token of its own."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


class TorchEngine:
    """``Engine`` on the live torch model. ``update_weights`` (or any in-place parameter change, which
    is detected) makes the next ``generate`` use the current weights."""

    def __init__(self, model, tokenizer, max_batch: int = 64, dtype: torch.dtype | str | None = None,
                 progress: bool = True, fast: bool | None = None):
        from reasonloop.models import resolve_dtype

        if max_batch < 1:
            raise UserError(f"max_batch: expected >= 1, got {max_batch}")
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype or "auto", self.device)
        self.max_batch, self.progress = max_batch, progress
        self.eos = eos_ids(model, tokenizer)
        use_fast = supports_fast_path(model) if fast is None else fast
        self.fast = LlamaFast(model, self.dtype, self.device) if use_fast else None

    def update_weights(self, model) -> None:
        self.model = model
        if self.fast is not None:
            with torch.no_grad():
                self.fast.load(model)

    def generate(self, prompts: list[list[int]], params: SamplingParams, progress: bool | None = None,
                 keys: list[list[int]] | None = None) -> list[list[Sample]]:
        """``keys[i][j]``: the random stream of sample j of prompt i (``sampling.prompt_seed``); by default
        derived from the prompt's token ids and ``params.seed``."""
        check_params(params)
        if any(len(p) == 0 for p in prompts):
            raise UserError("generate: empty prompt (no token ids)")
        keys = default_keys(prompts, params) if keys is None else keys
        check_keys(keys, len(prompts), params.n)
        show = self.progress if progress is None else progress
        if not prompts:
            return []
        finisher = Finisher(self.tokenizer, self.eos, params)
        bar = Progress(len(prompts) * params.n, show)
        try:
            with torch.inference_mode():
                if self.fast is None:
                    from reasonloop.generate.hf_path import generate_waves

                    done = generate_waves(self.model, prompts, params, self.max_batch, finisher, keys, bar,
                                          self.device)
                else:
                    done = self._generate_fast(prompts, params, finisher, keys, bar)
        finally:
            bar.close()
            if self.fast is not None:  # between calls the engine holds no KV cache and no weight copies
                self.fast.release_cache()
                self.fast.unload()
        out: list[list[Sample]] = [[None] * params.n for _ in prompts]  # type: ignore[list-item]
        for seq in done:
            out[seq.prompt_index][seq.sample_index] = finisher.sample(seq)
        return out

    # ------------------------------------------------------------------ fast path
    def _generate_fast(self, prompts, params, finisher, keys, bar) -> list[Seq]:
        fast = self.fast
        if fast.stale():
            fast.load(self.model)
        slots = min(self.max_batch, len(prompts) * params.n)
        fast.allocate(slots, max(len(p) for p in prompts) + params.max_new_tokens)
        queue = deque((i, 0) for i in range(len(prompts)))  # (prompt index, next sample index)
        saved: dict[int, tuple] = {}  # prompt index -> ((k, v), logits) while samples are still queued
        prefix = self._shared_prefix(prompts)
        active: list[Seq] = []  # active[j] lives in cache slot j
        done: list[Seq] = []
        while active or queue:
            self._admit(prompts, params, queue, saved, prefix, active, slots, keys, finisher)
            active = self._retire(active, done, bar)
            if not active:
                continue
            tokens = torch.tensor([s.tokens[-1] for s in active], device=self.device)  # [B]
            pos = torch.tensor([s.pos for s in active], device=self.device)  # [B]
            logits = fast.decode(tokens, pos)  # [B, V]
            for seq in active:
                seq.pos += 1
            draw(active, logits, params, finisher)
            active = self._retire(active, done, bar)
        return done

    def _shared_prefix(self, prompts):
        """Prefill the prompts' common prefix (e.g. the chat template's system turn) once; its (k, v)."""
        length = common_prefix_len(prompts)
        if length < 2 or len(prompts) < 2:
            return None
        self.fast.prefill([prompts[0][:length]], [0])
        return self.fast.snapshot(0, length)

    def _admit(self, prompts, params, queue, saved, prefix, active, slots, keys, finisher) -> None:
        """Fill free slots from the queue; sample each new sequence's first token from its prompt logits.

        A prefill forward costs about as much for one prompt as for sixteen (at small batch it is bound
        by reading the weights), so while other rows are decoding, prompts are admitted in waves of at
        least a quarter of the slots and prefilled together.
        """
        free = slots - len(active)
        if not queue or free == 0 or (active and free < max(1, slots // 4)):
            return
        fast, wave = self.fast, []
        while queue and free:
            index, sample = queue.popleft()
            take = min(params.n - sample, free)
            wave.append((index, sample, take))
            free -= take
            if sample + take < params.n:  # its remaining samples wait for free slots
                queue.appendleft((index, sample + take))
        # Longest prompt first: slots then run roughly in order of length (decode reads each run of rows'
        # cache only up to its longest row, llama_fast.attention_chunks).
        wave.sort(key=lambda entry: -len(prompts[entry[0]]))
        placed = []  # [prompt index, first sample, slot, count, logits or None]
        for index, sample, take in wave:
            slot, logits = len(active), None
            if index in saved:
                kv, logits = saved[index]
                fast.restore(kv, slot)
            elif prefix is not None:
                fast.restore(prefix, slot)
            placed.append([index, sample, slot, take, logits])
            active.extend(Seq(index, sample + j, pos=len(prompts[index]), key=keys[index][sample + j])
                          for j in range(take))
        start = 0 if prefix is None else prefix[0].shape[2]
        self._prefill(prompts, [p for p in placed if p[4] is None], start)
        started, first_logits = [], []
        for index, sample, slot, take, logits in placed:
            length = len(prompts[index])
            for j in range(1, take):
                fast.copy_slot(slot, slot + j, length)
            if sample + take < params.n:
                saved[index] = (fast.snapshot(slot, length), logits)
            else:
                saved.pop(index, None)
            started.extend(active[slot:slot + take])
            first_logits.extend([logits] * take)
        draw(started, torch.stack(first_logits), params, finisher)

    def _prefill(self, prompts, placed, start: int) -> None:
        """Batched prefill of the placed prompts' own tokens (after the shared prefix of ``start``
        positions, already restored into their slots); sets their logits. ``PREFILL_TOKENS`` bounds one
        forward's activations.

        Why 1024: 64 GSM8K prompts (4008 tokens past the shared prefix) took 9.9-11.7 s in forwards of up to
        4096 tokens, 8.2-10.6 s of up to 2048, 7.7-9.8 s of up to 1024 and 10.0-11.3 s of up to 512
        (SmolLM2-135M, fp32, 2-core AVX2 EPYC, interleaved in one process). At 4096 tokens the MLP's
        [tokens, 2 x 1536] fp32 activation is 50 MB, above glibc's largest mmap threshold (32 MB), so
        every layer maps fresh pages and faults them in; from 512 down the matmuls lose efficiency."""
        chunks, tokens = [[]], 0
        for entry in placed:
            size = len(prompts[entry[0]]) - start
            if chunks[-1] and tokens + size > PREFILL_TOKENS:
                chunks.append([])
                tokens = 0
            chunks[-1].append(entry)
            tokens += size
        for chunk in filter(None, chunks):
            logits = self.fast.prefill([prompts[e[0]][start:] for e in chunk], [e[2] for e in chunk], start)
            for e, row in zip(chunk, logits):  # row: [V]
                e[4] = row

    def _retire(self, active: list[Seq], done: list[Seq], bar) -> list[Seq]:
        """Move finished sequences out; the rest end up in slots 0..B'-1.

        Each hole below B' takes one of the live rows above it (its KV copied down), so a step copies
        as many caches as rows finished. Shifting every later row down instead copied about half the
        batch's caches each time a row finished. Row order does not matter: each row draws from its
        own key.
        """
        if all(s.finish is None for s in active):
            return active
        for seq in active:
            if seq.finish is not None:
                done.append(seq)
                bar.update(1, len(seq.tokens))
        live = sum(s.finish is None for s in active)
        holes = [slot for slot in range(live) if active[slot].finish is not None]
        movers = [slot for slot in range(live, len(active)) if active[slot].finish is None]
        kept = active[:live]
        for hole, mover in zip(holes, movers):  # a mover sits at or above B' and a hole below: no overlap
            self.fast.copy_slot(mover, hole, active[mover].pos)
            kept[hole] = active[mover]
        return kept
