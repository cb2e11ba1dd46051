"""Peak memory per stage, returning a finished stage's memory, and a register of what must not outlive a stage.

Peak resident memory: on Linux the kernel keeps the process's high-water mark (VmHWM in /proc/self/status)
and writing "5" to /proc/self/clear_refs resets it to the current resident size. A stage resets it at its
start and reads it at its end: exact at page granularity, no cost while the stage runs, and no short
spike is missed (a sampling thread would miss spikes between samples and needs the GIL to sample).
Where /proc is absent or the reset is refused (macOS, some sandboxes) the fallback is getrusage's
ru_maxrss, the peak of the whole process so far: it cannot be reset, so a stage's number is then an upper
bound (`peak_rss_kind: process`). On CUDA, torch's allocator peak is reset and read the same way.

Lifetimes: `load_model` and `make_engine` register what they build with `track`; after a stage ends and
`release` ran, `survivors()` lists whatever of it is still alive (a stage holding on to a model through
a module-level cache or the run context), which the pipeline logs and a test forbids.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
import sys
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_tracked: list[tuple[int, str, weakref.ref]] = []  # (serial, what, weak reference): weak, so it keeps nothing alive
_serial = 0


# ------------------------------------------------------------------ resident memory
def _status_kb(key: str) -> int | None:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS), or None without /proc."""
    try:
        match = re.search(rf"^{key}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def maxrss_mb(ru_maxrss: int, platform: str = sys.platform) -> float:
    """getrusage's ru_maxrss in MB: kilobytes on Linux and the BSDs, bytes on macOS."""
    return ru_maxrss / (1024 * 1024) if platform == "darwin" else ru_maxrss / 1024


def _process_peak_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak() -> str:
    """Start a new peak measurement; returns what the next `peak()` will measure: `stage` when the
    high-water mark could be reset, `process` when only the whole process's peak is known."""
    _reset_cuda_peak()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return "process"
    return "stage" if _status_kb("VmHWM") is not None else "process"


def peak() -> dict:
    """Peak memory since `reset_peak`, in MB: `peak_rss_mb` and, on CUDA, `peak_allocated_mb`."""
    hwm = _status_kb("VmHWM")
    rss = hwm / 1024 if hwm is not None else _process_peak_mb()
    out = {} if rss is None else {"peak_rss_mb": round(rss, 1)}
    cuda = _cuda_peak_mb()
    if cuda is not None:
        out["peak_allocated_mb"] = round(cuda, 1)
    return out


def rss_mb() -> float | None:
    """Resident memory now (None without /proc)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def _cuda_ready() -> bool:
    torch = sys.modules.get("torch")  # never import torch just to find out that no GPU was used
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


def _reset_cuda_peak() -> None:
    if _cuda_ready():
        sys.modules["torch"].cuda.reset_peak_memory_stats()


def _cuda_peak_mb() -> float | None:
    if not _cuda_ready():
        return None
    return sys.modules["torch"].cuda.max_memory_allocated() / (1024 * 1024)


def peak_text(entry: dict) -> str:
    """A summary entry's peak memory for a table: `812` (MB resident), `<=812` when only the process's peak
    was known (an upper bound), `+ 1430 GPU` with a CUDA peak; `-` when not measured (older run folders)."""
    rss = entry.get("peak_rss_mb")
    if rss is None:
        return "-"
    text = f"{'<=' if entry.get('peak_rss_kind') == 'process' else ''}{rss:.0f}"
    gpu = entry.get("peak_allocated_mb")
    return text if gpu is None else f"{text} + {gpu:.0f} GPU"


# ------------------------------------------------------------------ returning memory
def _malloc_trim() -> bool:
    """glibc keeps freed heap for reuse; malloc_trim(0) hands the free pages back to the OS. A no-op
    (False) on other C libraries and platforms."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # musl (no libc.so.6) or no malloc_trim
        return False


def release() -> None:
    """Return what a finished stage no longer needs: collect reference cycles (models sit in some), hand
    freed heap back to the OS, empty torch's CUDA cache.

    Within a stage glibc keeps its defaults. The CLI set a fixed 256 KiB mmap threshold (every tensor its
    own mmap, returned on free) until 2026-12-03. On the default recipe's SFT and GRPO stages
    (SmolLM2-135M, fp32, 2-core AVX2 EPYC) it saved ~10% of the peak but cost 20-50% of the time, each
    large tensor page-faulting afresh: SFT 2.62 against 2.94 GB and 84 against 60 s, GRPO 2.99 against 3.40 GB and
    291 against 197 s for three steps (a 64 MiB threshold: 2.98 / 3.44 GB, 71 / 207 s); run again back to
    back, 53 against 39 s and 181 against 129 s for the same peaks."""
    gc.collect()
    _malloc_trim()
    if _cuda_ready():
        sys.modules["torch"].cuda.empty_cache()


# ------------------------------------------------------------------ lifetimes
def track(obj, what: str):
    """Register `obj` (a model, an engine) as living no longer than the stage that built it; returns obj."""
    global _serial
    try:
        _tracked.append((_serial, what, weakref.ref(obj)))
    except TypeError:  # not weak-referenceable: nothing to check
        return obj
    _serial += 1
    return obj


def mark() -> int:
    """A point in time for `survivors(since=...)`: objects tracked from now on."""
    return _serial


def survivors(since: int = 0) -> list[str]:
    """What of the objects tracked since `since` is still alive (call after `release`); forgets the dead."""
    _tracked[:] = [entry for entry in _tracked if entry[2]() is not None]
    return [what for serial, what, _ in _tracked if serial >= since]
