"""How a trained model is spread over the processes, as `run.parallel` picks it: ddp or fsdp.

- **ddp** (default): every rank holds the whole model, gradients and optimizer state; the loops sum the
  gradients themselves (reasonloop.dist.sync_gradients).
- **fsdp**: PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`; Zhao et al. 2023, "PyTorch FSDP:
  Experiences on Scaling Fully Sharded Data Parallel"): each rank holds 1/N of every weight, gradient and
  AdamW moment, so a full fine-tune needs about 16/N bytes per parameter per GPU instead of 16. Each decoder
  layer is one FSDP unit (all-gathered for its forward and backward, then freed); the root unit holds the
  embeddings, the final norm and the LM head. Gradients are reduce-scattered with a sum (each rank already
  weighted its loss by its share of the global batch, as under ddp), so a step means the same thing.

`shard` is the one place a model is wrapped; the rest of this module is what the loops, checkpoints and
rollout engines call so the same code runs on sharded and whole models (for a whole model each is a plain
pass-through): `lockstep`, `clip_grad_norm`, `full_state_dict` / `load_full_state_dict`, `optimizer_state` /
`load_optimizer_state` (checkpoints stay plain HF folders with index-keyed optimizer state, so a run resumes
at any world size and under either mode) and `generation_model` (full weights for the rollout engine).
"""

from __future__ import annotations

import weakref
from typing import Iterable, Iterator, TypeVar

import torch
from torch.distributed.tensor import DTensor

from reasonloop import dist
from reasonloop.errors import UserError
from reasonloop.models import backbone, unwrap

KINDS = ("ddp", "fsdp")
# The decoder under the LM head, as a method of the FSDP root: see `shard`.
BACKBONE_METHOD = "reasonloop_backbone"

T = TypeVar("T")


def shard(model, parallel: str):
    """Prepare `model` (an HF CausalLM, loaded on CPU for fsdp) for training under `run.parallel`; returns it.

    ddp, or a single process: the model as it is. fsdp under torchrun: every decoder layer (the model's
    `_no_split_modules`) and then the whole model become FSDP units, moved to this rank's device.
    Mixed precision stays off (fp32 shards, all-gathered in fp32): bf16 comes from the loops' autocast, as
    under ddp, so both modes compute the same numbers.
    """
    if parallel not in KINDS:
        raise UserError(f"run.parallel: expected one of {', '.join(KINDS)}, got {parallel!r}")
    if parallel == "ddp":
        return model
    # Checked in one process too, so a recipe that cannot shard fails before any work, wherever it runs.
    if hasattr(model, "peft_config"):
        raise UserError("run.parallel: fsdp shards full fine-tuning; LoRA models train with ddp")
    hf = unwrap(model)
    names = set(getattr(hf, "_no_split_modules", None) or [])
    layers = [m for m in hf.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(f"run.parallel: fsdp found no decoder layers to shard in {type(hf).__name__} "
                        "(its _no_split_modules names none); use ddp")
    if not dist.active():
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(hf, mesh=mesh)
    for unit in hf.modules():
        if isinstance(unit, FSDPModule):
            # Sum, not FSDP's default mean: each rank's loss already carries its share of the global batch.
            # Sum-only collectives: gloo has no PREMUL_SUM, which a divide factor would otherwise use.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    # The loops call the decoder directly (reasonloop.packing.packed_hidden) and apply the head to chosen
    # positions only, which skips the root's forward hooks that gather the embeddings, norm and head. As a
    # registered forward method of the root, the decoder call runs those hooks; the root keeps its weights
    # gathered after forward (FSDP's default for the root), so the head weight read next is whole.
    object.__setattr__(hf, BACKBONE_METHOD, backbone(hf).__call__)
    register_fsdp_forward_method(hf, BACKBONE_METHOD)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def backbone_call(model):
    """The callable that runs the decoder under the model's head: the FSDP root's registered method when
    the model is sharded, else the decoder module itself."""
    return getattr(unwrap(model), BACKBONE_METHOD, None) or backbone(model)


def lockstep(model, items: list[T], spare: T) -> Iterator[tuple[T, bool]]:
    """This rank's micro-batches as (item, True); for a sharded model, then (spare, False) until every rank
    has made as many passes as the busiest one. Each FSDP forward and backward is a collective that all ranks
    must join; callers run a spare pass with zero weight and drop its metrics."""
    # Agreed on before the first pass: asked after this rank's own passes, the count would meet the busiest
    # rank's next all-gather instead.
    rounds = int(dist.all_reduce_max(float(len(items)))) if is_sharded(model) else len(items)
    for item in items:
        yield item, True
    for _ in range(rounds - len(items)):
        yield spare, False


SQUARES_SLICE = 1 << 20


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Scale the gradients down to a global 2-norm of at most `max_norm` (as torch's clip_grad_norm_); returns
    the norm before clipping.

    Each gradient's sum of squares is taken in fp32 by ``sum`` (cascade summation: 3e-9 to 3e-8 relative off
    the exact value over SmolLM2-135M's gradients or one 3M-element tensor) over slices of 2**20 elements, and
    the slices' sums are added in float64. The slices avoid a 113 MB temporary for the tied embedding's
    gradient: 45 against 95 ms per call over SmolLM2-135M's gradients (2-core AVX2 EPYC), 4e-9 against 1e-8
    relative off the float64 dot product. Why not the norms: torch's clip_grad_norm_ uses fp32
    ``vector_norm``, 1.6e-3 relative off on one 28M-element tensor on a 2-core AVX2 EPYC and 1e-5 on a
    3.2M-parameter model, enough that the clipped updates of a whole model and of its FSDP shards (whose
    squares are summed shard by shard) drifted apart;
    ``vector_norm`` in float64 is exact but cost 0.4-0.9 s per optimizer step for 135M parameters, against
    0.1 s here. FSDP gradients are shards (DTensors), their sums added over every rank; a whole gradient
    beside them (PPO's value head, equal on every rank after dist.sync_gradients) counts once.
    """
    grads = [p.grad for p in params if p.grad is not None]
    zero = torch.zeros((), dtype=torch.float64)

    def squares(gs):  # slice by slice on the gradient's device, one transfer per gradient
        return sum((sum(torch.square(part.float()).sum().double() for part in g.reshape(-1).split(SQUARES_SLICE))
                    .cpu() for g in gs), zero)

    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    total = squares([g for g in grads if not isinstance(g, DTensor)])
    if sharded:
        total = total + dist.all_reduce_sum(squares(sharded).reshape(1))[0]
    norm = total.sqrt().item()
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """A sharded model's whole weights on CPU, on rank 0 (others: {}); None for a whole model (save it as it
    is). Every rank must call it: the shards are gathered."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    hf = unwrap(model)
    weights = get_model_state_dict(hf, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # A tied weight (the LM head sharing the embedding) comes back under each name as separate tensors; keep
    # the first name only, as a whole model's save_pretrained does, so both write the same files.
    names = {n for n, _ in hf.named_parameters()} | {n for n, _ in hf.named_buffers()}
    return {k: v for k, v in weights.items() if k in names}


def load_full_state_dict(model, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load whole weights (every rank read the same checkpoint) into a sharded model, each rank keeping its
    shard; returns (missing, unexpected) keys as `load_state_dict` does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    hf = unwrap(model)
    own = set(hf.state_dict())
    missing = sorted(own - set(weights))
    unexpected = sorted(set(weights) - own)
    set_model_state_dict(hf, {k: v for k, v in weights.items() if k in own},
                         options=StateDictOptions(full_state_dict=True, strict=False))
    return missing, unexpected


def optimizer_state(opt) -> dict | None:
    """`opt.state_dict()` with whole tensors: a sharded model's AdamW moments are gathered (every rank must
    call it) to rank 0 on CPU, in the same index-keyed layout a whole model's optimizer saves, so either
    resumes the other. Ranks other than 0 get None when anything was gathered."""
    state = opt.state_dict()
    if not any(isinstance(v, DTensor) for s in state["state"].values() for v in s.values()):
        return state
    gathered = {}
    for index in sorted(state["state"]):  # the same order on every rank: the gathers pair up
        gathered[index] = {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v
                           for k, v in state["state"][index].items()}
    return {"state": gathered, "param_groups": state["param_groups"]} if dist.is_main() else None


def load_optimizer_state(opt, state: dict) -> None:
    """Load index-keyed optimizer state with whole tensors; a sharded parameter's moments are cut to this
    rank's shard (each rank read the whole checkpoint, so nothing is sent)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    if any(isinstance(p, DTensor) for p in params):
        from torch.distributed.tensor import distribute_tensor

        def fit(v, p):  # src_data_rank None: each rank cuts its shard from its own copy
            if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape:
                return distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            return v  # AdamW's step count, a whole parameter's moments

        state = {**state, "state": {i: {k: fit(v, params[int(i)]) for k, v in s.items()}
                                    for i, s in state["state"].items()}}
    opt.load_state_dict(state)


_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # sharded model -> its generation copy


def generation_model(model, dtype: str = "auto"):
    """The model a rollout engine reads. Whole model: `model` itself (the engines read its live weights).

    Sharded model: a plain copy with whole weights in the compute dtype, refreshed from the shards at every
    call (every rank must call it; each gathers every weight). Generation cannot run on the shards: each
    rank samples its own prompts to their own lengths, a different number of forwards per rank, while each
    FSDP forward is a collective all ranks must join. The copy costs one model in the compute dtype per rank,
    what a colocated vLLM engine holds anyway; it lives as long as the trained model.
    """
    if not is_sharded(model):
        return model
    from reasonloop.memory import track
    from reasonloop.models import resolve_dtype

    hf = unwrap(model)
    copy = _COPIES.get(hf)
    if copy is None:
        device = next(hf.parameters()).device
        copy = track(_empty_like(hf, resolve_dtype(dtype, device), device), "fsdp generation copy")
        _COPIES[hf] = copy
    params = dict(copy.named_parameters())
    with torch.no_grad():
        for name, p in hf.named_parameters():  # one whole tensor at a time: peak memory is one weight
            params[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)
    return copy


def _empty_like(hf, dtype: torch.dtype, device: torch.device):
    """An unsharded model of `hf`'s architecture on `device`, weights uninitialised, buffers copied."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(hf.config, dtype=dtype)
    copy = copy.to_empty(device=device)
    copy.tie_weights()  # to_empty gives each module its own tensor; tied embeddings must share one again
    with torch.no_grad():
        for name, buf in hf.named_buffers():  # FSDP leaves buffers whole (e.g. the rotary frequencies)
            copy.get_buffer(name).copy_(buf)
    return copy.eval().requires_grad_(False)
