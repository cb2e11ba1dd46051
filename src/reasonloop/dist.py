"""torch.distributed glue: rank, world size, gradient and metric reductions. Works unlaunched (world of one).

Launch with `torchrun --nproc_per_node N -m reasonloop ...` or `accelerate launch --num_processes N -m
reasonloop ...`: both set the environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...)
that `init` reads. gloo on CPU, NCCL on GPU.

The loops call the model's backbone directly (reasonloop.packing.packed_hidden), which bypasses a DDP
wrapper's hooks, so gradients are synchronised here instead: each rank scales its loss by its share of
the step's global count (tokens or sequences, `share`), and `sync_gradients` sums the gradients. The
result is the single-process gradient of the whole global batch, at any world size (data parallelism as
in DDP, Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel Training").
Under `run.parallel: fsdp` the sharded weights' gradients are reduced by FSDP itself (reasonloop.parallel);
`sync_gradients` then sums only what is left whole (PPO's value head).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when a launcher (torchrun, accelerate) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group when launched by torchrun/accelerate; a no-op otherwise.

    On CPU the cores are split between the processes of one machine: N processes each running
    all-core matmuls oversubscribe the cores and run several times slower than one.
    """
    if not (dist.is_available() and launched()) or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=60))


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def _device() -> torch.device:
    """Where collectives run: NCCL needs CUDA tensors, gloo CPU ones."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks, in place; returns `t`."""
    if active():
        buf = t.to(_device())
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf)
    return t


def all_reduce_max(value: float) -> float:
    """The largest `value` over ranks."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def first_failure(message: str | None) -> tuple[int, str] | None:
    """(rank, message) of the lowest rank that failed, on every rank; None when none did. ``message``:
    this rank's error, None when it succeeded.

    Every rank must call it after work that can fail on some ranks only (user code such as a reward
    function). A rank that raised alone would leave the others blocked in their next collective until
    the process group's timeout; this way every rank stops with the same error.
    """
    for rank, theirs in enumerate(all_gather_object(message)):
        if theirs is not None:
            return rank, theirs
    return None


def share(local_count: float) -> float:
    """This rank's fraction of the global count (tokens or sequences of one step or minibatch).

    Scaling each rank's mean loss by its share and summing gradients over ranks gives the gradient of
    the global mean. 0 when no rank has anything (the step contributes nothing).
    """
    total = all_reduce_sum(torch.tensor([float(local_count)], dtype=torch.float64)).item()
    return float(local_count) / total if total > 0 else 0.0


def sum_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Sum each metric over ranks in one collective (callers pre-weight values by `share`).

    Every rank must pass the same keys in the same order.
    """
    if not active() or not metrics:
        return dict(metrics)
    keys = list(metrics)
    t = all_reduce_sum(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, t.tolist()))


def sync_gradients(params) -> None:
    """Sum gradients over ranks (each rank already scaled its loss by its `share` of the global batch).

    Gradients are flattened into one buffer per dtype so the all-reduce is one call per dtype, not one
    per tensor. A parameter without a gradient on this rank (a rank with no micro-batch this step)
    joins with zeros, so every rank reduces buffers of the same size; a parameter no rank touched
    keeps `grad = None`, as it would in one process. Parameters FSDP shards (reasonloop.parallel) are left
    out: FSDP reduce-scatters their gradients itself, in the backward.
    """
    if not active():
        return
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
    if not params:
        return
    had = torch.tensor([float(p.grad is not None) for p in params])  # [P]
    all_reduce_sum(had)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch._utils._flatten_dense_tensors(grads).to(_device())  # [sum of numels]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)
    for p, h in zip(params, had.tolist()):
        if h == 0:
            p.grad = None


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (picklable objects)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def interleave(parts: list[list]) -> list:
    """Undo a strided split: ``parts[r]`` holds items r, r + N, r + 2N, ... of a list split over N ranks
    (``items[r::N]``); return the list in its original order."""
    out = []
    for k in range(max((len(p) for p in parts), default=0)):
        out.extend(p[k] for p in parts if k < len(p))
    return out


def gather_strided(local: list) -> list:
    """Every rank's strided share (``items[rank::world]``) back into the whole list, on every rank."""
    return interleave(all_gather_object(local)) if active() else list(local)
