"""Sequence packing for training forwards: many sequences in one row, no padding in the linear layers,
no attention or position leakage between them.

Tokens of all sequences are laid end to end ([1, N]); positions restart at 0 for each sequence. The
linear layers (most of the compute) see exactly N real tokens. Attention is computed per sequence by
a registered Hugging Face attention function that scatters q/k/v into a padded [S, H, L, d] block
and runs causal SDPA on it; with right padding and a causal mask, real queries never see padding, and
sequences never see each other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonloop.models import backbone_and_head, unwrap  # noqa: F401  (they lived here; import them from models)

ATTN_NAME = "reasonloop_packed"


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    dest: torch.Tensor  # [N]: slot of each token in the padded [S * L] layout
    num_seqs: int
    max_len: int
    seq_lens: list[int]
    loss_mask: torch.Tensor  # [N] bool: position t predicts token t+1 of the same sequence and is trained
    targets: torch.Tensor  # [N] long: the next token (0 where loss_mask is False)


def pack_sequences(seqs: list[list[int]], trained_from: list[int], device="cpu") -> PackedBatch:
    """Lay `seqs` end to end. Tokens at index >= trained_from[i] of sequence i are targets (the response).

    The loss sits on the position *before* each target token, so a response starting at index r is
    predicted from positions r-1 .. len-2 of its own sequence.
    """
    lens = [len(s) for s in seqs]
    max_len = max(lens)
    ids, pos, dest, mask, tgt = [], [], [], [], []
    for i, (s, start) in enumerate(zip(seqs, trained_from)):
        ids += s
        pos += range(len(s))
        dest += range(i * max_len, i * max_len + len(s))
        for t in range(len(s)):
            trained = t + 1 < len(s) and t + 1 >= start
            mask.append(trained)
            tgt.append(s[t + 1] if trained else 0)
    as_long = dict(dtype=torch.long, device=device)
    return PackedBatch(input_ids=torch.tensor([ids], **as_long), position_ids=torch.tensor([pos], **as_long),
                       dest=torch.tensor(dest, **as_long), num_seqs=len(seqs), max_len=max_len, seq_lens=lens,
                       loss_mask=torch.tensor(mask, dtype=torch.bool, device=device),
                       targets=torch.tensor(tgt, **as_long))


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
    """Per-sequence causal attention over a packed row. query [1, Hq, N, d]; key/value [1, Hkv, N, d]."""
    pack: PackedBatch = kwargs["packed"]
    S, L = pack.num_seqs, pack.max_len

    def padded(x):  # [1, H, N, d] -> [S, H, L, d]
        h, d = x.shape[1], x.shape[3]
        out = x.new_zeros(S * L, h, d)
        out[pack.dest] = x[0].transpose(0, 1)
        return out.view(S, L, h, d).transpose(1, 2)

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
    body, _ = backbone_and_head(model)
    with packed_attention_mode(model):
        out = body(input_ids=batch.input_ids, position_ids=batch.position_ids, packed=batch, use_cache=False)
    return out.last_hidden_state[0]
