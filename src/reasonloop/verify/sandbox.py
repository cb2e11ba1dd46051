"""Run model-written Python in a separate, isolated, resource-limited process.

ReFT ("ReFT: Reasoning with Reinforced Fine-Tuning", Luong et al. 2024) rewards program-of-thought
solutions by running them; its code uses in-process ``exec``. Here every program gets a fresh process:

- namespaces: new mount, network, PID, IPC and UTS namespaces (as root directly; otherwise inside a
  new user namespace). No network interface is up; the program's PID namespace dies with it.
- identity: as root, the program runs as an unprivileged uid of its own (one per parallel slot, so
  RLIMIT_NPROC, which root ignores, is enforced per program); otherwise its capabilities are dropped.
- filesystem: every mount is remounted read-only; a fresh tmpfs scratch directory is the only
  writable place and the working directory; a fresh /proc shows only the program's own processes.
- rlimits: CPU time, address space, processes (1: no fork, no threads), file size, open files, core.
- no inherited environment; stdout + stderr capped; wall-clock timeout.
- a Python audit hook refuses fork/exec/subprocess/socket with a clear ``forbidden`` error (a
  courtesy message only: the kernel-level limits above are the boundary when the hook is bypassed).

Whatever of this the kernel refuses is skipped and named in ``ProgramResult.isolation``; the program
never runs in the calling process. Two launch modes: ``spawn`` (a new interpreter per program) and
``fork`` (a fork server: one clean interpreter forks a fresh child per program; faster startup, same
per-program isolation). The child side is sandbox_child.py, a stdlib-only launcher script.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reasonloop.verify.sandbox_child import UID_BASE

ERRORS = ("timeout", "memory", "forbidden", "crash", "output too large")


@dataclass
class ProgramResult:
    ok: bool  # exited normally within every limit
    stdout: str
    error: str | None  # None when ok, else one of ERRORS
    detail: str = ""  # e.g. "ZeroDivisionError: division by zero" or "forbidden: os.fork"
    stderr: str = ""
    isolation: str = ""  # what was applied, e.g. "user,mount,net,pid,ipc,uts,ro-root,tmpfs,proc,uid,rlimits"
    returncode: int | None = None  # negative: killed by that signal
    seconds: float = 0.0


# --------------------------------------------------------------------------- parent side


_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_PYTHON = [sys.executable, "-I", "-S", "-B", str(Path(__file__).with_name("sandbox_child.py"))]
SETUP_LIMIT_S = 10.0  # namespace + interpreter setup before the program's own clock starts
_lock = threading.Lock()
_free_slots: list[int] = []
_slot_count = 0
_warned: set[str] = set()


def _acquire_slot() -> int:
    global _slot_count
    with _lock:
        if _free_slots:
            return _free_slots.pop()
        _slot_count += 1
        return (_slot_count - 1) % 256


def _release_slot(slot: int) -> None:
    with _lock:
        _free_slots.append(slot)


class _ForkServer:
    """One clean interpreter (per calling process) that forks a fresh launcher per program."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(_PYTHON + ["--serve", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                     env=_ENV, stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.sock, self.replies, self.owner = ours, ours.makefile("rb"), os.getpid()
        self.lock = threading.Lock()

    def start(self, payload: bytes, fds: list[int]) -> int:
        with self.lock:
            socket.send_fds(self.sock, [payload], fds)
            line = self.replies.readline()
        if not line:
            raise OSError("sandbox fork server exited")
        return int(line)


_server: _ForkServer | None = None


def _start_forked(payload: bytes, fds: list[int]):
    global _server
    with _lock:
        if _server is None or _server.owner != os.getpid() or _server.proc.poll() is not None:
            _server = _ForkServer()
        server = _server
    pid = server.start(payload, fds)
    return lambda: _kill(pid), lambda: None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_spawned(payload: bytes, fds: list[int]):
    stdin_r, stdin_w = os.pipe()
    proc = subprocess.Popen(_PYTHON + ["--launch", str(fds[3])], stdin=stdin_r, stdout=fds[1], stderr=fds[2],
                            pass_fds=(fds[3],), env=_ENV, cwd="/")
    os.close(stdin_r)
    with open(stdin_w, "wb") as f:
        f.write(payload)
    return proc.kill, proc.wait


def _collect(out_r: int, err_r: int, status_r: int, timeout_s: float, cap: int, kill):
    """Read both outputs and the status records until EOF, the deadline or the output cap."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: [], status_r: []}
    poller = select.poll()
    for fd in chunks:
        poller.register(fd, select.POLLIN)
    open_fds, size, problem = set(chunks), 0, None
    deadline, started = time.monotonic() + SETUP_LIMIT_S, False
    while open_fds:
        if not started and b"isolation" in b"".join(chunks[status_r]):
            deadline, started = time.monotonic() + timeout_s, True
        left = deadline - time.monotonic()
        if left <= 0:
            problem = "timeout"
            break
        for fd, _ in poller.poll(min(left, 0.5) * 1000):
            data = os.read(fd, 1 << 16)
            if not data:
                open_fds.discard(fd)
                poller.unregister(fd)
                continue
            chunks[fd].append(data)
            if fd != status_r:
                size += len(data)
        if size > cap:
            problem = "output too large"
            break
    if problem:
        kill()
    return [b"".join(chunks[fd]) for fd in (out_r, err_r, status_r)], problem


def _result(out: bytes, err: bytes, status: bytes, problem: str | None, timeout_s: float, cap: int,
            seconds: float) -> ProgramResult:
    records: dict = {}
    for line in status.decode(errors="replace").splitlines():
        try:
            records.update(json.loads(line))
        except (ValueError, TypeError):
            continue  # a program may scribble on its status fd: it only spoils its own result
    code = records.get("exit")
    error, detail = records.get("error"), records.get("detail", "")
    if problem == "timeout":
        error, detail = "timeout", f"ran longer than {timeout_s} s"
    elif problem:
        error, detail = problem, f"more than {cap} bytes of output"
    elif code in (-signal.SIGXCPU, -signal.SIGKILL) and error is None:
        error, detail = "timeout", f"CPU time limit ({timeout_s} s)"
    elif code != 0 and error is None:
        error, detail = "crash", f"exit status {code}" if code is not None else "sandbox launcher failed"
    isolation = records.get("isolation", "")
    if error is None and isolation not in _warned:
        _warned.add(isolation)
        missing = {"net", "pid", "mount", "ro-root", "tmpfs"} - set(isolation.split(","))
        if missing:
            import logging

            logging.getLogger(__name__).warning("sandbox: weaker isolation here (missing %s): %s",
                                                ",".join(sorted(missing)), isolation)
    return ProgramResult(ok=error is None, stdout=out.decode(errors="replace"), error=error, detail=detail,
                         stderr=err.decode(errors="replace")[-4000:], isolation=isolation, returncode=code,
                         seconds=seconds)


def run_program(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output: int = 1 << 16,
                scratch_mb: int = 16, mode: str = "fork") -> ProgramResult:
    """Run ``code`` (Python source) in a fresh sandboxed process; see the module docstring.

    ``timeout_s``: wall-clock and CPU limit of the program (its setup is not counted);
    ``memory_mb``: address-space limit; ``max_output``: bytes of stdout + stderr before it is killed;
    ``scratch_mb``: size of its writable scratch tmpfs (also the per-file size limit);
    ``mode``: ``fork`` (fork server, faster start) or ``spawn`` (new interpreter per program).
    """
    import shutil
    import tempfile

    if mode not in ("fork", "spawn"):
        raise ValueError(f"sandbox mode must be 'fork' or 'spawn', got {mode!r}")
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_output", max_output),
                        ("scratch_mb", scratch_mb)):
        if not value > 0:
            raise ValueError(f"sandbox {name} must be > 0, got {value!r}")
    t0 = time.perf_counter()
    slot = _acquire_slot()
    uid = UID_BASE + (os.getpid() % 100_000) * 256 + slot
    scratch = tempfile.mkdtemp(prefix="reasonloop-sandbox-")
    if os.getuid() == 0:
        os.chown(scratch, uid, uid)  # used as is when no mount namespace is available
    cfg = {"timeout_s": timeout_s, "memory_mb": memory_mb, "scratch": scratch, "scratch_mb": scratch_mb,
           "file_mb": scratch_mb, "uid": uid, "env": dict(_ENV, HOME=scratch, TMPDIR=scratch)}
    payload = json.dumps({"code": code, "cfg": cfg}).encode()
    pipes = [os.pipe() for _ in range(3)]
    null = os.open(os.devnull, os.O_RDONLY)
    child_fds = [null] + [w for _, w in pipes]
    try:
        start = _start_forked if mode == "fork" else _start_spawned
        try:
            kill, wait = start(payload, child_fds)
        finally:
            for fd in child_fds:
                os.close(fd)
        (out, err, status), problem = _collect(*(r for r, _ in pipes), timeout_s, max_output, kill)
        wait()
    finally:
        for r, _ in pipes:
            os.close(r)
        shutil.rmtree(scratch, ignore_errors=True)
        _release_slot(slot)
    return _result(out, err, status, problem, timeout_s, max_output, time.perf_counter() - t0)


def run_programs(codes: list[str], workers: int | None = None, **kwargs) -> list[ProgramResult]:
    """``run_program`` over many programs, ``workers`` (default: the core count) at a time, in order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(codes) or 1, 256))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_program(c, **kwargs), codes))
