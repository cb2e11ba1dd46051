"""Start N processes joined by gloo on this machine, as torchrun would start them, and run one job in each.

A job is `JOBS[name](*args)` of the calling test module (named by `module`): a spawned process imports that
module afresh, so jobs must be module-level functions.
"""

from __future__ import annotations

import importlib
import os
import socket
import time

import torch.multiprocessing as mp

from reasonloop import dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, module: str, job: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init()
    try:
        importlib.import_module(module).JOBS[job](*args)
    finally:
        dist.shutdown()


def launch(module: str, job: str, *args, world: int = 2, timeout: float | None = None) -> None:
    """Run `module`'s JOBS[job](*args) in `world` processes. With `timeout` (seconds), a job still running
    then is killed and the call raises TimeoutError: for jobs where a rank left waiting in a collective is
    the failure being tested (the process group's own timeout is an hour)."""
    ctx = mp.start_processes(_worker, args=(world, free_port(), module, job, args), nprocs=world,
                             start_method="spawn", join=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if deadline is not None and time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            raise TimeoutError(f"{job}: still running after {timeout} s")
