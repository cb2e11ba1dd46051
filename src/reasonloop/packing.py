"""Sequence packing for training forwards: many sequences in one row, no padding in the linear layers,
no attention or position leakage between them.

Tokens of all sequences are laid end to end ([1, N]); positions restart at 0 for each sequence. The
linear layers (most of the compute) see exactly N real tokens. Attention is computed per sequence by
a registered Hugging Face attention function that gathers q/k/v into a padded [S, H, L, d] block
and runs causal SDPA on it; with right padding and a causal mask, real queries never see padding, and
sequences never see each other. Sequences that share a prompt (an RL group) may carry it once: the
gather puts the same prompt tokens at the head of each of their rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonloop.models import backbone, backbone_and_head, unwrap  # noqa: F401  (they lived here; import them from models)
from reasonloop.parallel import backbone_call

ATTN_NAME = "reasonloop_packed"


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    src: torch.Tensor  # [S * L]: the packed token shown in each slot of the padded [S, L] layout (N: padding)
    dest: torch.Tensor  # [N]: the slot each token's attention output is read from
    num_seqs: int
    max_len: int
    seq_lens: list[int]
    pred_index: torch.Tensor  # [n]: the packed token whose hidden state predicts each trained token
    pred_slots: torch.Tensor  # [n]: that prediction's slot in [S, L] (row: sequence, column: position before it)
    targets: torch.Tensor  # [n] long: the trained tokens


def pack_sequences(seqs: list[list[int]], trained_from: list[int], device="cpu",
                   share_prompts: bool = False) -> PackedBatch:
    """Lay `seqs` end to end. Tokens at index >= trained_from[i] of sequence i are targets (the response).

    The loss sits on the position *before* each target token, so a response starting at index r is
    predicted from positions r-1 .. len-2 of its own sequence.

    ``share_prompts``: sequences whose prompts (``seq[:trained_from]``) are equal, as the G samples of one
    RL group are, carry the prompt tokens once; each sequence's attention still sees them as its own
    prefix (the padded [S, L] layout gathers them into every row), so the result is the same while the
    linear layers, most of the compute, run on the prompt once per group instead of G times.
    """
    lens = [len(s) for s in seqs]
    S, L = len(seqs), max(lens)
    ids: list[int] = []
    pos: list[int] = []
    dest: list[int] = []
    src: list[list[int]] = []  # per row: the packed tokens it shows, in order
    shared: dict[tuple[int, ...], list[int]] = {}
    for i, (s, start) in enumerate(zip(seqs, trained_from)):
        start = max(1, min(start, len(s)))  # token 0 has no position before it to predict it from
        key = tuple(s[:start])
        row = shared.get(key) if share_prompts else None
        if row is None:  # this row shows the prompt first and supplies its outputs
            row = list(range(len(ids), len(ids) + start))
            ids += s[:start]
            pos += range(start)
            dest += range(i * L, i * L + start)
            if share_prompts:
                shared[key] = row
        rest = range(len(ids), len(ids) + len(s) - start)
        ids += s[start:]
        pos += range(start, len(s))
        dest += range(i * L + start, i * L + len(s))
        src.append(row + list(rest))
    n_tokens = len(ids)
    slots = torch.full((S * L,), n_tokens, dtype=torch.long)
    for i, row in enumerate(src):
        slots[i * L: i * L + len(row)] = torch.tensor(row, dtype=torch.long)
    # Target j >= start of row i is predicted at column j - 1 of that row.
    pred_slots = [i * L + j - 1 for i, (s, start) in enumerate(zip(seqs, trained_from))
                  for j in range(max(1, start), len(s))]
    targets = [s[j] for s, start in zip(seqs, trained_from) for j in range(max(1, start), len(s))]
    as_long = dict(dtype=torch.long, device=device)
    slots = slots.to(device)
    pred = torch.tensor(pred_slots, **as_long)
    return PackedBatch(input_ids=torch.tensor([ids], **as_long), position_ids=torch.tensor([pos], **as_long),
                       src=slots, dest=torch.tensor(dest, **as_long), num_seqs=S, max_len=L, seq_lens=lens,
                       pred_index=slots[pred], pred_slots=pred, targets=torch.tensor(targets, **as_long))


def plan_microbatches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group example indices (in the given order) into micro-batches of at most `batch_tokens` tokens.

    Order is kept so that the data order (shuffle, curriculum) decides what trains when; an example
    longer than the budget gets a micro-batch of its own.
    """
    plan, cur, used = [], [], 0
    for i, n in enumerate(lengths):
        if cur and used + n > batch_tokens:
            plan.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        plan.append(cur)
    return plan


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs):
    """Per-sequence causal attention over a packed row. query [1, Hq, N, d]; key/value [1, Hkv, N, d].
    A forward without a packed batch (generation, a plain `model(...)` call) gets PyTorch SDPA as usual."""
    pack: PackedBatch | None = kwargs.get("packed")
    if pack is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    S, L = pack.num_seqs, pack.max_len

    def padded(x):  # [1, H, N, d] -> [S, H, L, d]; a shared prompt token appears in several rows
        h, d = x.shape[1], x.shape[3]
        tokens = torch.cat([x[0].transpose(0, 1), x.new_zeros(1, h, d)])  # [N + 1, H, d]; row N: padding
        return tokens[pack.src].view(S, L, h, d).transpose(1, 2)

    q, k, v = padded(query), padded(key), padded(value)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                         dropout_p=dropout if module.training else 0.0)  # [S, Hq, L, d]
    out = out.transpose(1, 2).reshape(S * L, q.shape[1], q.shape[3])[pack.dest]  # [N, Hq, d]
    return out.unsqueeze(0), None  # [1, N, Hq, d], as HF attention functions return


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, packed_attention)


_register()


def keep_packed_attention(model) -> None:
    """Leave the model on the packed attention for good (it falls back to SDPA without a packed batch).
    Gradient checkpointing needs this: it recomputes each layer during backward, after
    `packed_attention_mode` has switched the attention back. The setting is not saved with the model."""
    unwrap(model).config._attn_implementation = ATTN_NAME


@contextlib.contextmanager
def packed_attention_mode(model):
    """Switch the model's attention to the packed implementation for the duration of a forward."""
    config = unwrap(model).config
    old = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = old


def packed_hidden(model, batch: PackedBatch) -> torch.Tensor:
    """Final hidden states [N, H] of a packed batch."""
    body = backbone_call(model)  # a causal LM's or a verifier's (sequence-classification) decoder
    with packed_attention_mode(model):
        out = body(input_ids=batch.input_ids, position_ids=batch.position_ids, packed=batch, use_cache=False)
    return out.last_hidden_state[0]
