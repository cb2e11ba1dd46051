"""Run one side of a benchmark in a fresh interpreter and measure its peak resident memory.

Each side (TRL, reasonloop) runs in its own spawned process, so neither inherits the other's imports,
freed-but-kept heap or model, and the kernel's high-water mark of that process (VmHWM; getrusage where
/proc is absent) is its peak: both sides start from the same interpreter with the bench module imported.
"""

from __future__ import annotations

import multiprocessing as mp


def _measured(fn, args):
    from reasonloop.memory import peak

    out = fn(*args)
    return {**out, **peak()}  # peak_rss_mb of the whole process, and peak_allocated_mb on CUDA


def run_apart(fn, *args) -> dict:
    """fn(*args) (a module-level function returning a dict) in a spawned process, with `peak_rss_mb` added."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measured, (fn, args))
