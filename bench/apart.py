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


def cpu_kind() -> str:
    """The CPU's model name and its bf16 support, for benchmark output and the README tables: the same
    code is ~5x faster in bf16 with AMX, ~3x with AVX512-BF16, and emulates bf16 with AVX2 only."""
    import re
    from pathlib import Path

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE) or ["", ""])[1].split())
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else \
        "AVX-512, no bf16 units" if "avx512f" in flags else "AVX2 only, bf16 emulated"
    return f"{name[1].strip() if name else 'unknown CPU'} ({bf16})"


def best_dtype() -> str:
    """The machine's fastest training/generation dtype, as the recipe field `model.dtype: auto` resolves it
    ("bf16" where the CPU multiplies bf16 fast, else "fp32"). Both sides of a benchmark run in it: ours
    through `dtype=`, TRL's through `bf16=`, as a TRL user on this machine would set it."""
    import torch

    from reasonloop.models import resolve_dtype

    return "bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32"
