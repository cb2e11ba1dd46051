"""Packing with shared prompts: the G samples of a group carry their prompt once, with the same result."""

import torch

from reasonloop.packing import pack_sequences, packed_hidden


def test_shared_prompt_layout_by_hand():
    # Two samples of one prompt [5, 6]: completions [7, 8] and [9]; a third sequence has its own prompt.
    batch = pack_sequences([[5, 6, 7, 8], [5, 6, 9], [4, 7]], [2, 2, 1], share_prompts=True)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 4, 7]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    pad = 7
    assert batch.src.tolist() == [0, 1, 2, 3, 0, 1, 4, pad, 5, 6, pad, pad]  # rows of L = 4
    assert batch.dest.tolist() == [0, 1, 2, 3, 6, 8, 9]  # the shared prompt's outputs come from row 0
    assert batch.pred_slots.tolist() == [1, 2, 5, 8]  # the position before each target, row by row
    assert batch.pred_index.tolist() == [1, 2, 1, 5]  # token 1 (the shared `6`) predicts both 7 and 9
    assert batch.targets.tolist() == [7, 8, 9, 7]


def test_unshared_layout_is_the_plain_packing():
    batch = pack_sequences([[5, 6, 7, 8], [5, 6, 9]], [2, 2])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 5, 6, 9]]
    assert batch.src.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert batch.pred_index.tolist() == [1, 2, 5] and batch.targets.tolist() == [7, 8, 9]


def _logits_and_grads(model, batch):
    model.zero_grad()
    hidden = packed_hidden(model, batch)[batch.pred_index]  # [n, H]
    logp = torch.log_softmax(hidden @ model.lm_head.weight.T, -1).gather(1, batch.targets[:, None])[:, 0]
    logp.sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_shared_prompts_give_the_same_logprobs_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (6, 9)]
    seqs = [prompts[k] + torch.randint(3, 200, (m,), generator=g).tolist()
            for k, m in ((0, 4), (0, 7), (0, 1), (1, 5), (1, 3))]
    starts = [len(prompts[0])] * 3 + [len(prompts[1])] * 2
    plain, shared = pack_sequences(seqs, starts), pack_sequences(seqs, starts, share_prompts=True)
    assert shared.input_ids.shape[1] == plain.input_ids.shape[1] - 2 * 6 - 9  # each prompt once
    logp_plain, grads_plain = _logits_and_grads(model, plain)
    logp_shared, grads_shared = _logits_and_grads(model, shared)
    torch.testing.assert_close(logp_shared, logp_plain, atol=1e-5, rtol=1e-5)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_shared[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    # The packed attention's gather indices reach each decoder layer as keyword arguments; the
    # recomputation in backward must see them too, or the gradients would differ.
    from reasonloop.config import ModelConfig
    from reasonloop.models import load_trainable

    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (9, 12, 5)]
    batch = pack_sequences(seqs, [4, 6, 2])
    results = {}
    for checkpointing in (False, True):
        model, _ = load_trainable(str(tiny_model_dir), ModelConfig(dtype="fp32", gradient_checkpointing=checkpointing))
        assert model.is_gradient_checkpointing == checkpointing and model.training
        results[checkpointing] = _logits_and_grads(model, batch)
        with torch.no_grad():  # a plain forward (no packed batch) still runs: the packed attention falls back to SDPA
            results[checkpointing] += (model.eval()(torch.tensor([seqs[1]])).logits,)
    torch.testing.assert_close(results[True][0], results[False][0], atol=0, rtol=0)
    torch.testing.assert_close(results[True][2], results[False][2], atol=1e-6, rtol=1e-6)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
