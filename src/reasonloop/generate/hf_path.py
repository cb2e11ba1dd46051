"""The generic path for architectures without a fast path: the model's own HF forward, in waves.

Each wave of up to ``max_batch`` samples is left-padded, prefilled together and decoded with the HF
cache; rows that finish are dropped from the cache (``batch_select_indices``) so they cost nothing
more. Unlike the fast path, a freed row is not refilled until the next wave.
"""

from __future__ import annotations

import inspect

import torch

from reasonloop.generate.bookkeeping import Seq, draw


def generate_waves(model, prompts, params, max_batch, finisher, keys, bar, device) -> list:
    work = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
    done: list = []
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        for start in range(0, len(work), max_batch):
            seqs = [Seq(i, j, pos=len(prompts[i]), key=keys[i][j]) for i, j in work[start:start + max_batch]]
            done += _wave(model, [prompts[s.prompt_index] for s in seqs], seqs, params, finisher, bar, device)
    finally:
        model.train(was_training)
    return done


def _cache_of(out):
    # transformers >= 5.24 names the cache `cache`; earlier versions `past_key_values`.
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


def _cache_kwarg(model) -> str:
    from reasonloop.models import unwrap

    params = inspect.signature(unwrap(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _wave(model, prompts, seqs, params, finisher, bar, device) -> list:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)  # [W, T], left-padded
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, device=device)
        mask[row, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [W, T]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits = _cache_of(out), out.logits[:, -1]  # [W, V]
    live, done = list(seqs), []
    while True:
        draw(live, logits, params, finisher)
        new = torch.tensor([s.tokens[-1] for s in live], device=device)  # [B]
        keep = [row for row, seq in enumerate(live) if seq.finish is None]
        for seq in live:
            if seq.finish is not None:
                done.append(seq)
                bar.update(1, len(seq.tokens))
        if not keep:
            return done
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, new = mask[index], new[index]
            live = [live[row] for row in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)  # [B, T + 1]
        step_pos = torch.tensor([s.pos for s in live], device=device)[:, None]  # [B, 1]
        for seq in live:
            seq.pos += 1
        out = model(input_ids=new[:, None], attention_mask=mask, position_ids=step_pos,
                    use_cache=True, logits_to_keep=1, **{_cache_kwarg(model): cache})
        cache, logits = _cache_of(out), out.logits[:, -1]
