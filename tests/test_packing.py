"""Packing: sequences laid end to end with their own positions, trained positions and padded slots."""

import torch

from reasonloop.packing import pack_sequences, plan_microbatches


def test_pack_sequences_positions_targets_and_slots():
    # sequence 0: prompt [5, 6], response [7, 8]; sequence 1: prompt [9], response [10]
    b = pack_sequences([[5, 6, 7, 8], [9, 10]], trained_from=[2, 1])
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1]]  # each sequence restarts at 0
    # position t is trained when token t+1 is in the same sequence's response
    assert b.pred_index.tolist() == [1, 2, 4] and b.targets.tolist() == [7, 8, 10]
    assert b.pred_slots.tolist() == [1, 2, 4]  # row 1 starts at slot 4
    assert (b.num_seqs, b.max_len, b.seq_lens) == (2, 4, [4, 2])
    assert b.dest.tolist() == [0, 1, 2, 3, 4, 5]  # slots in the padded [S=2, L=4] layout
    padded = torch.cat([b.input_ids[0], torch.tensor([0])])[b.src].view(2, 4)  # src: 6 = padding
    assert padded.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]


def test_plan_microbatches_keeps_order_and_budget():
    assert plan_microbatches([3, 4, 2, 5, 1], batch_tokens=7) == [[0, 1], [2, 3], [4]]
    assert plan_microbatches([10, 2], batch_tokens=4) == [[0], [1]]  # too long alone: its own micro-batch
    assert plan_microbatches([], batch_tokens=4) == []
