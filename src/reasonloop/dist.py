"""torch.distributed glue: rank, world size, gradient all-reduce. Works unlaunched (world of one).

Launch with `torchrun --nproc_per_node N -m reasonloop ...` (or `accelerate launch`): both set the
environment variables `init` reads. gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group when launched by torchrun/accelerate; a no-op otherwise."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sync_gradients(params) -> None:
    """Sum gradients over ranks (each rank already scaled its loss by its share of the global batch).

    Gradients are flattened into one buffer per dtype so the all-reduce is one call, not one per tensor.
    """
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def broadcast_object(obj):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
