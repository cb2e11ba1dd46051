"""reasonloop.parallel: `run.parallel` ddp | fsdp.

- one process, or ddp: every helper is a pass-through (the model, its gradients, its optimizer as they are);
- clip_grad_norm against hand-computed values, and against the exact (float64) norm;
- (e2e) FSDP2 over 2 gloo processes: gradients, the clipped norm, the gathered weights and optimizer state,
  the generation copy and a reload of the gathered state equal what one process has (tolerance `REL_TOL`),
  and ranks with unequal numbers of micro-batches stay in step.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import torch

import gloo
from conftest import build_tiny_model
from reasonloop import dist, parallel
from reasonloop.errors import UserError

# Gradients summed over 2 ranks in another order than 1 process sums them: float32 rounding (measured here:
# 1.2e-6 absolute on embedding gradients of 6.8, the largest).
REL_TOL = 1e-5
SEQS = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [7, 8, 9, 10, 11, 12], [11, 12, 13, 14, 15], [3, 4, 5, 6], [9, 8, 7, 6, 5]]


def test_one_process_and_ddp_leave_the_model_as_it_is():
    model = build_tiny_model(64)
    assert parallel.shard(model, "ddp") is model and parallel.shard(model, "fsdp") is model  # one process
    assert not parallel.is_sharded(model) and parallel.generation_model(model) is model
    assert parallel.backbone_call(model) is model.model and parallel.full_state_dict(model) is None
    assert list(parallel.lockstep(model, ["a", "b"], spare="x")) == [("a", True), ("b", True)]
    opt = torch.optim.AdamW(model.parameters())
    state = opt.state_dict()
    assert parallel.optimizer_state(opt) == state
    parallel.load_optimizer_state(opt, state)


def test_unknown_parallel_kind_is_named():
    with pytest.raises(UserError, match=r"run.parallel: expected one of ddp, fsdp, got 'zero'"):
        parallel.shard(build_tiny_model(64), "zero")


def test_models_fsdp_cannot_shard_are_refused_in_one_process_too():
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(build_tiny_model(64), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="run.parallel: fsdp shards full fine-tuning; LoRA models train with ddp"):
        parallel.shard(lora, "fsdp")
    model = build_tiny_model(64)
    model._no_split_modules = []
    with pytest.raises(UserError, match=r"fsdp found no decoder layers to shard in LlamaForCausalLM \(its "
                                        r"_no_split_modules names none\); use ddp"):
        parallel.shard(model, "fsdp")


def test_kinds_are_the_config_choices():
    from reasonloop.config import RunConfig

    assert typing.get_args(RunConfig.model_fields["parallel"].annotation) == parallel.KINDS


@pytest.mark.parametrize("slice_elements", [1, 1 << 20])
def test_clip_grad_norm_hand_computed(slice_elements, monkeypatch):
    monkeypatch.setattr(parallel, "SQUARES_SLICE", slice_elements)  # 1: every element its own slice
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert parallel.clip_grad_norm([a, b], 10.0) == pytest.approx(5.0)
    assert a.grad.tolist() == [3.0, 0.0]  # under the limit: untouched
    assert parallel.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0]) and b.grad.tolist() == pytest.approx([0.8])
    assert parallel.clip_grad_norm([torch.nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no gradient at all


def test_clip_grad_norm_is_exact_to_fp32_summation():
    # fp32 vector_norm was 1.6e-3 relative off on a 28M-element tensor on an AVX2 CPU; per-tensor fp32 sums of
    # squares (cascade summation) added in float64 stay within ~1e-7 (3e-8 here).
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3_000_000, 1000, 1)]
    for p in params:
        p.grad = torch.randn(p.shape) * 100
    exact = sum(p.grad.double().pow(2).sum() for p in params).sqrt().item()
    assert parallel.clip_grad_norm(params, float("inf")) == pytest.approx(exact, rel=1e-6)


# --------------------------------------------------------------------------- 2 processes


def adamw(model):
    """eps 1: Adam's first step is g / (|g| + eps), which for eps << |g| is sign(g), and turns the rounding of
    a near-zero gradient into a full step either way; with eps 1 the step follows g smoothly."""
    return torch.optim.AdamW(list(model.parameters()), lr=1e-2, eps=1.0, fused=True)


def _grads_and_step(model, seqs, opt=None) -> dict:
    """One packed forward/backward of `seqs` (this rank's share), then clip and an AdamW step."""
    from reasonloop.algos.logprobs import token_logprobs
    from reasonloop.models import backbone_and_head
    from reasonloop.packing import pack_sequences, packed_hidden

    mine = seqs[dist.rank()::dist.world_size()]
    opt = opt or adamw(model)
    passes = []
    for chunk, real in parallel.lockstep(model, [[s] for s in mine], spare=[seqs[0]]):
        batch = pack_sequences(chunk, [2] * len(chunk))
        hidden = packed_hidden(model, batch)
        loss = -token_logprobs(hidden[batch.pred_index], backbone_and_head(model)[1], batch.targets)["logp"].sum()
        (loss * float(real)).backward()
        passes.append(real)
    norm = parallel.clip_grad_norm(list(model.parameters()), 1.0)
    opt.step()
    return {"norm": norm, "passes": passes, "opt": opt}


def job_fsdp(model_dir: str, out: Path) -> None:
    from torch.distributed.tensor import DTensor

    from reasonloop.models import load_model

    model = parallel.shard(load_model(model_dir, trainable=True, device="cpu")[0], "fsdp")
    assert parallel.is_sharded(model) and all(isinstance(p, DTensor) for p in model.parameters())
    res = _grads_and_step(model, SEQS)  # 5 sequences: rank 0 has 3 passes, rank 1 two and a spare
    weights = parallel.full_state_dict(model)  # rank 0 only
    opt_state = parallel.optimizer_state(res["opt"])
    copy = parallel.generation_model(model, "fp32")
    ids = torch.tensor([SEQS[0]])
    res.update(logits=copy(ids).logits.tolist(), tied=copy.lm_head.weight is copy.model.embed_tokens.weight,
               copy_sharded=parallel.is_sharded(copy))
    # A fresh sharded model and optimizer take the gathered state back, as a resume does.
    again = parallel.shard(load_model(model_dir, trainable=True, device="cpu")[0], "fsdp")
    missing, unexpected = parallel.load_full_state_dict(again, dist.broadcast_object(weights))
    opt2 = adamw(again)
    parallel.load_optimizer_state(opt2, dist.broadcast_object(opt_state))
    same_weights = all(torch.equal(a.to_local(), b.to_local()) for a, b in zip(model.parameters(), again.parameters()))
    same_opt = all(torch.equal(s1[k].to_local(), s2[k].to_local()) for s1, s2 in
                   zip(res["opt"].state.values(), opt2.state.values()) for k in ("exp_avg", "exp_avg_sq"))
    if dist.is_main():
        torch.save({"weights": weights, "opt": opt_state}, out / "state.pt")
    res = {k: v for k, v in res.items() if k != "opt"}
    res.update(missing=missing, unexpected=unexpected, same_opt=same_opt, same_weights=same_weights)
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(res))


JOBS = {"fsdp": job_fsdp}


@pytest.mark.e2e
def test_fsdp_two_processes_equal_one_process(tmp_path, tiny_model_dir):
    from reasonloop.models import load_model

    model = load_model(str(tiny_model_dir), trainable=True, device="cpu")[0]
    one = _grads_and_step(model, SEQS)
    one_logits = model(torch.tensor([SEQS[0]])).logits
    gloo.launch(__name__, "fsdp", str(tiny_model_dir), tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["passes"] == [True, True, True] and r1["passes"] == [True, True, False]  # in step: 3 each
    for res in (r0, r1):
        assert res["norm"] == pytest.approx(one["norm"], rel=REL_TOL)
        assert torch.allclose(torch.tensor(res["logits"]), one_logits, rtol=REL_TOL, atol=1e-5)
        assert res["tied"] and not res["copy_sharded"] and res["same_weights"] and res["same_opt"]
        # The tied head is saved once, under the embedding's name, as a whole model saves it.
        assert res["missing"] == ["lm_head.weight"] and res["unexpected"] == []
    state = torch.load(tmp_path / "state.pt")
    assert "lm_head.weight" not in state["weights"]
    for name, p in dict(model.named_parameters()).items():  # whole weights after the step, as one process has them
        assert torch.allclose(state["weights"][name], p, rtol=REL_TOL, atol=1e-6), name
    whole = one["opt"].state_dict()
    assert state["opt"]["param_groups"] == whole["param_groups"]
    for i, s in whole["state"].items():  # the index-keyed layout a whole model saves
        assert torch.allclose(state["opt"]["state"][i]["exp_avg"], s["exp_avg"], rtol=REL_TOL, atol=1e-7)
