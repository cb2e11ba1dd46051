"""Run model-written Python in a separate, isolated, resource-limited process.

ReFT ("ReFT: Reasoning with Reinforced Fine-Tuning", Luong et al. 2024) rewards program-of-thought
solutions by running them; its code uses in-process ``exec``. Here every program is treated as hostile
and gets a fresh process:

- session: the launcher starts a new session (no controlling terminal); the program runs in its own
  process group and can never acquire a terminal, and none is reachable (no /dev/tty, /dev/pts).
- namespaces: new mount, network, PID, IPC and UTS namespaces (as root directly; otherwise inside a
  new user namespace). No network interface is up; the program is PID 1 of its PID namespace.
- filesystem: a root built for the program and entered with pivot_root: read-only /usr, /bin, /lib*,
  /etc/ld.so.cache, /etc/localtime and the interpreter's standard library, five devices, a fresh /proc
  showing only its own processes, and a private, size-capped tmpfs /tmp (its working directory and
  HOME). The host's /tmp, /run, /home, /root, Unix sockets and files are not there.
- identity: as root, the program runs as an unprivileged uid of its own (one per parallel slot, so
  RLIMIT_NPROC, which root ignores, is enforced per program); otherwise it keeps the caller's uid inside
  its user namespace with every capability dropped. No new privileges either way; a new, empty session
  keyring (the caller's is not inherited).
- system calls: a seccomp filter refuses keyrings, namespaces, mounts, ptrace, bpf, perf, userfaultfd and
  io_uring (EPERM), and other system call ABIs (e.g. i386 ``int 0x80`` on x86_64).
- rlimits: CPU time, address space, processes (1: no fork, no threads), file size, open files, core.
- no inherited environment; stdout + stderr capped at ``max_output``, the status channel at
  ``STATUS_LIMIT``; wall-clock timeout. When the call returns, every process it started is gone: the
  launcher kills the program's PID namespace and reports only once it is empty.
- a Python audit hook refuses fork/exec/subprocess/socket with a clear ``forbidden`` error (a
  courtesy message only: the kernel-level limits above are the boundary when the hook is bypassed).

Where the kernel refuses any of the isolating steps, ``run_program`` raises ``SandboxUnavailable`` (one
line naming the step) and runs nothing. Two launch modes: ``spawn`` (a new interpreter per program) and
``fork`` (a fork server: one clean interpreter forks a fresh launcher per program; faster startup, same
per-program isolation). The child side is sandbox_child.py, a stdlib-only launcher script (its root
filesystem: sandbox_root.py). Linux only; x86_64, aarch64 and riscv64 (the seccomp filter's tables).
"""
from __future__ import annotations

import json
import logging
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
from functools import lru_cache
from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.verify.sandbox_child import FRAME, MAX_PROGRAM_BYTES, UID_BASE

ERRORS = ("timeout", "memory", "forbidden", "crash", "output too large", "program too large")
STATUS_LIMIT = 1 << 14  # bytes of status records (the program's own ones are under 2 KiB)
_CONTROL_LIMIT = 1 << 16
SETUP_LIMIT_S = 10.0  # namespace + interpreter setup before the program's own clock starts
STOP_GRACE_S = 5.0  # after a stop request, how long the launcher gets to empty the namespace


class SandboxUnavailable(UserError):
    """This machine cannot isolate programs (the message names the step); nothing was run."""


@dataclass
class ProgramResult:
    ok: bool  # exited normally within every limit
    stdout: str
    error: str | None  # None when ok, else one of ERRORS
    detail: str = ""  # e.g. "ZeroDivisionError: division by zero" or "forbidden: os.fork"
    stderr: str = ""
    isolation: str = ""  # what was applied, e.g. "session,mount,pid,net,ipc,uts,root,tmpfs,proc,rlimits,uid"
    returncode: int | None = None  # negative: killed by that signal
    seconds: float = 0.0


# --------------------------------------------------------------------------- parent side


_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": "/tmp",
        "TMPDIR": "/tmp", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_PYTHON = [sys.executable, "-I", "-S", "-B", str(Path(__file__).with_name("sandbox_child.py"))]
_HINT = ("it needs Linux namespaces: run as root, or allow unprivileged user namespaces (sysctl "
         "kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; in a container a seccomp/AppArmor "
         "profile that allows unshare and mount)")
_lock = threading.Lock()
_free_slots: list[int] = []
_slot_count = 0
_log = logging.getLogger(__name__)


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


@lru_cache(maxsize=1)
def _id_maps() -> tuple[list[tuple[int, ...]], ...]:
    maps = []
    for name in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/self/{name}") as f:
                maps.append([tuple(map(int, line.split())) for line in f if line.strip()])
        except OSError:
            maps.append([])
    return tuple(maps)


def _identity(slot: int) -> tuple[int, bool]:
    """(uid for the program, whether it needs a user namespace). Root whose namespace does not map the
    sandbox uids (a rootless container) takes the user-namespace path like any other user."""
    uid = UID_BASE + (os.getpid() % 100_000) * 256 + slot
    mapped = all(any(inner <= uid < inner + count for inner, _, count in m) for m in _id_maps())
    return (uid, False) if os.getuid() == 0 and mapped else (os.getuid(), True)


class _ForkServer:
    """One clean interpreter (per calling process) that forks a fresh launcher per program.

    A request is one byte with the launcher's four fds; the reply is one byte (``+`` with the launcher's
    pidfd, ``-`` when it could not fork), so requests and replies cannot get out of step. The program
    itself travels on the launcher's own control socket, framed."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(_PYTHON + ["--serve", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                     env=_ENV, stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.sock, self.owner, self.broken = ours, os.getpid(), False
        self.lock = threading.Lock()

    def start(self, fds: list[int]) -> int | None:
        with self.lock:
            try:
                socket.send_fds(self.sock, [b"R"], fds)
                reply, pidfds, _, _ = socket.recv_fds(self.sock, 1, 1)
            except OSError:
                reply, pidfds = b"", []
            self.broken = self.broken or not reply
        if reply != b"+":
            for fd in pidfds:
                os.close(fd)
            raise OSError("sandbox fork server " + ("could not fork a launcher" if reply else "exited"))
        return pidfds[0] if pidfds else None


_server: _ForkServer | None = None


def _fork_server() -> _ForkServer:
    global _server
    with _lock:
        if _server is None or _server.owner != os.getpid() or _server.broken or _server.proc.poll() is not None:
            if _server is not None and _server.owner == os.getpid():
                _server.sock.close()  # a dead or broken server: its replacement starts clean
            _server = _ForkServer()
        return _server


def _start_forked(fds: list[int]):
    server = _fork_server()
    try:
        pidfd = server.start(fds)
    except OSError:
        if not server.broken:
            raise
        pidfd = _fork_server().start(fds)  # the server had died (e.g. killed for memory): once more, fresh

    def force_kill() -> None:  # only for a launcher stuck before it forked the program
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass

    def reap() -> None:  # its channels are closed; wait until the launcher itself is gone, too
        if pidfd is not None:
            select.select([pidfd], [], [], STOP_GRACE_S)
            os.close(pidfd)

    return force_kill, reap


def _start_spawned(fds: list[int]):
    proc = subprocess.Popen(_PYTHON + ["--launch", str(fds[2]), str(fds[3])], stdin=subprocess.DEVNULL,
                            stdout=fds[0], stderr=fds[1], pass_fds=(fds[2], fds[3]), env=_ENV, cwd="/")
    return proc.kill, proc.wait


def _collect(out_r: int, err_r: int, status_r: int, control: socket.socket, timeout_s: float, cap: int,
             force_kill):
    """Read every channel until all are closed: that is, until the launcher has emptied the program's
    namespace and exited. On the deadline or a cap, ask the launcher to stop the program (shut the control
    socket down), keep reading (discarding) until the end, and force the launcher only if it hangs."""
    ctl = control.fileno()
    bufs = {out_r: bytearray(), err_r: bytearray(), status_r: bytearray(), ctl: bytearray()}
    poller = select.poll()
    for fd in bufs:
        poller.register(fd, select.POLLIN)
    open_fds, problem, stop_at, forced = set(bufs), None, None, False
    deadline, started = time.monotonic() + SETUP_LIMIT_S, False
    while open_fds:
        now = time.monotonic()
        if not started and b'"started"' in bufs[ctl]:  # written by our code, just before the program's
            deadline, started = now + timeout_s, True
        if problem is None and now >= deadline:
            problem = "timeout"
        if problem is not None and stop_at is None:
            stop_at = now
            try:
                control.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the launcher is already gone
        if stop_at is not None and now >= stop_at + STOP_GRACE_S * (1 + forced):
            if forced:
                _log.warning("sandbox: a launcher did not finish %.0f s after being killed", 2 * STOP_GRACE_S)
                break
            force_kill()
            forced = True
        until = deadline if stop_at is None else stop_at + STOP_GRACE_S * (1 + forced)
        for fd, _ in poller.poll(max(0.0, min(until - now, 0.5)) * 1000 + 1):
            data = os.read(fd, 1 << 16)
            if not data:
                open_fds.discard(fd)
                poller.unregister(fd)
            elif problem is None or (fd == ctl and len(bufs[ctl]) < _CONTROL_LIMIT):
                bufs[fd] += data  # once stopping, only the launcher's records are kept
        if problem is None and (len(bufs[out_r]) + len(bufs[err_r]) > cap or len(bufs[status_r]) > STATUS_LIMIT):
            problem = "output too large"
    return [bytes(bufs[fd]) for fd in (out_r, err_r, status_r, ctl)], problem


def _records(data: bytes) -> dict:
    records: dict = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a program may scribble on its status fd: it only spoils its own result
        if isinstance(record, dict):
            records.update(record)
    return records


def _result(out: bytes, err: bytes, status: dict, control: dict, problem: str | None, timeout_s: float,
            cap: int, seconds: float) -> ProgramResult:
    """``status``: the program process's records (untrusted); ``control``: the launcher's (exit status)."""
    code = control.get("exit")
    error, detail = status.get("error"), str(status.get("detail", ""))[:500]
    if error is not None and error not in ERRORS:
        error = "crash"
    if problem == "timeout":
        error, detail = "timeout", f"ran longer than {timeout_s} s"
    elif problem:
        error, detail = problem, f"more than {cap} bytes of output"
    elif code in (-signal.SIGXCPU, -signal.SIGKILL) and error is None:
        error, detail = "timeout", f"CPU time limit ({timeout_s} s)"
    elif code != 0 and error is None:
        error, detail = "crash", f"exit status {code}" if code is not None else "sandbox launcher failed"
    return ProgramResult(ok=error is None, stdout=out.decode(errors="replace"), error=error, detail=detail,
                         stderr=err.decode(errors="replace")[-4000:], isolation=str(control.get("started", "")),
                         returncode=code, seconds=seconds)


def _run(source: bytes, cfg: dict, mode: str, timeout_s: float, cap: int):
    """Start a launcher, send it the program, collect every channel: (out, err, status, control), problem."""
    pipes = [os.pipe() for _ in range(3)]
    control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            start = _start_forked if mode == "fork" else _start_spawned
            force_kill, reap = start([w for _, w in pipes] + [theirs.fileno()])
        finally:
            for _, w in pipes:
                os.close(w)
            theirs.close()
        body = json.dumps(cfg).encode()
        control.settimeout(SETUP_LIMIT_S)
        try:
            control.sendall(FRAME.pack(len(body), len(source)) + body + source)
        except OSError:
            pass  # the launcher is gone or stuck: _collect sees it end or stops it
        channels, problem = _collect(*(r for r, _ in pipes), control, timeout_s, cap, force_kill)
        reap()
    finally:
        for r, _ in pipes:
            os.close(r)
        control.close()
    return channels, problem


def run_program(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output: int = 1 << 16,
                scratch_mb: int = 16, mode: str = "fork") -> ProgramResult:
    """Run ``code`` (Python source) in a fresh sandboxed process; see the module docstring.

    ``timeout_s``: wall-clock and CPU limit of the program (its setup is not counted);
    ``memory_mb``: address-space limit; ``max_output``: bytes of stdout + stderr before it is killed;
    ``scratch_mb``: size of its private /tmp (also the per-file size limit);
    ``mode``: ``fork`` (fork server, faster start) or ``spawn`` (new interpreter per program).
    Programs over ``MAX_PROGRAM_BYTES`` (UTF-8) are not started: error ``program too large``.
    Raises ``SandboxUnavailable`` where this machine cannot isolate the program.
    """
    if mode not in ("fork", "spawn"):
        raise ValueError(f"sandbox mode must be 'fork' or 'spawn', got {mode!r}")
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_output", max_output),
                        ("scratch_mb", scratch_mb)):
        if not value > 0:
            raise ValueError(f"sandbox {name} must be > 0, got {value!r}")
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"sandbox: programs run only on Linux (it needs Linux namespaces); this is "
                                 f"{sys.platform}. No program is run without isolation.")
    source = code.encode("utf-8", "surrogatepass")
    if len(source) > MAX_PROGRAM_BYTES:
        return ProgramResult(ok=False, stdout="", error="program too large",
                             detail=f"the program is {len(source)} bytes; the sandbox runs programs of at most "
                                    f"{MAX_PROGRAM_BYTES} bytes")
    t0 = time.perf_counter()
    slot = _acquire_slot()
    try:
        uid, userns = _identity(slot)
        cfg = {"timeout_s": timeout_s, "memory_mb": memory_mb, "scratch_mb": scratch_mb, "file_mb": scratch_mb,
               "uid": uid, "userns": userns, "env": _ENV}
        (out, err, status, control), problem = _run(source, cfg, mode, timeout_s, max_output)
    finally:
        _release_slot(slot)
    records = _records(control)
    if "refused" in records:
        hint = f"; {_HINT}" if records.get("kernel", True) else ""
        raise SandboxUnavailable(f"sandbox: cannot isolate programs on this machine ({records['refused']}){hint}. "
                                 "No program is run without isolation.")
    return _result(out, err, _records(status), records, problem, timeout_s, max_output, time.perf_counter() - t0)


def run_programs(codes: list[str], workers: int | None = None, **kwargs) -> list[ProgramResult]:
    """``run_program`` over many programs, ``workers`` (default: the core count) at a time, in order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(codes) or 1, 256))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_program(c, **kwargs), codes))
