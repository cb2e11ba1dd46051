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
per-program isolation). This file is also the launcher script, so it imports only the stdlib.
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
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
_MS_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
UID_BASE = 1_900_000_000  # far above any real account; uid = base + (parent pid % 100000) * 256 + slot
STATUS_FD = 3
FORBIDDEN_ERRNOS = {1, 11, 13, 30, 97, 100, 101, 111}  # EPERM EAGAIN EACCES EROFS EAFNOSUPPORT ENETDOWN ENETUNREACH ECONNREFUSED
# Imported before the program's uid drop, so programs can use them even where the interpreter's own
# files are unreadable to that uid (e.g. a pyenv under /root). Other stdlib imports need a readable install.
PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
           "operator", "re", "string", "random", "datetime", "heapq", "bisect", "numbers", "copy",
           "encodings.idna")  # idna: socket.getaddrinfo, so a connection attempt ends "forbidden"
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


# --------------------------------------------------------------------------- child side (stdlib only)


class SandboxViolation(PermissionError):
    """Raised by the audit hook inside the sandbox."""


_BLOCKED_EVENTS = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind", "pty.spawn")


def _audit(event, args):
    if event in _BLOCKED_EVENTS:
        raise SandboxViolation(f"forbidden: {event}")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _remount_readonly(libc) -> bool:
    """Bind-remount every mount read-only, keeping its locked flags (required inside a user namespace)."""
    ok = True
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
            flags |= _MS_FLAGS.get(opt, 0)
        if libc.mount(None, target.encode(), None, flags, None) != 0 and target == "/":
            ok = False
    return ok


def _setup_namespaces(cfg: dict, applied: list[str]) -> None:
    """In the outer launcher process: unshare, make the filesystem read-only, mount the scratch tmpfs."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS
    if uid != 0:
        flags |= NEWUSER
    if libc.unshare(flags) != 0:
        return  # no namespaces at all: rlimits (+ uid drop as root) are what is left
    applied.extend((["user"] if uid != 0 else []) + ["mount", "net", "pid", "ipc", "uts"])
    if uid != 0:  # become root of the new user namespace (mapped to our own uid) to set up mounts
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    if _remount_readonly(libc):
        applied.append("ro-root")
    owner = f",uid={cfg['uid']},gid={cfg['uid']}" if uid == 0 else ""
    opts = f"size={cfg['scratch_mb']}m,mode=0700{owner}".encode()
    if libc.mount(b"tmpfs", cfg["scratch"].encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0:
        applied.append("tmpfs")
    # hide the host's /sys (network interfaces, hardware) behind an empty read-only tmpfs
    libc.mount(b"tmpfs", b"/sys", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k")


def _restrict_self(cfg: dict, applied: list[str]) -> None:
    """In the program process: fresh /proc, limits, unprivileged identity, audit hook."""
    import resource

    for name in PRELOAD:
        __import__(name)
    libc = _libc()
    if "pid" in applied and libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0:
        applied.append("proc")
    os.chdir(cfg["scratch"])
    cpu = max(1, int(cfg["timeout_s"] + 0.999))
    mem = cfg["memory_mb"] * 2**20
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                       (resource.RLIMIT_FSIZE, (cfg["file_mb"] * 2**20,) * 2), (resource.RLIMIT_NOFILE, (64, 64)),
                       (resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_NPROC, (1, 1))):
        resource.setrlimit(res, value)
    applied.append("rlimits")
    if os.getuid() == 0 and "user" not in applied:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
        applied.append("uid")
    else:  # capabilities in our own user namespace: drop them all (header v3, two empty data words)
        import ctypes

        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        if libc.capset(header, (ctypes.c_uint32 * 6)()) == 0:
            applied.append("nocaps")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binaries
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after setuid, which clears it)
    if select.select([cfg["life_fd"]], [], [], 0)[0]:
        os._exit(70)  # EOF on the life pipe: the launcher died before PDEATHSIG was armed
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large writes fail with EFBIG instead of killing
    os.closerange(STATUS_FD + 1, 1 << 16)  # also the life pipe
    sys.addaudithook(_audit)


def _classify(exc: BaseException) -> tuple[str | None, str]:
    detail = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, SystemExit):
        return (None, "") if exc.code in (0, None) else ("crash", f"exit status {exc.code}")
    if isinstance(exc, MemoryError):
        return "memory", detail
    if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG
        return "output too large", detail
    if isinstance(exc, SandboxViolation) or (isinstance(exc, OSError) and exc.errno in FORBIDDEN_ERRNOS):
        return "forbidden", detail
    return "crash", detail


def _status(record: dict) -> None:
    try:
        os.write(STATUS_FD, (json.dumps(record) + "\n").encode())
    except OSError:
        pass


def _run_program_process(code: str, cfg: dict, applied: list[str]) -> None:
    """Body of the program process (PID 1 of its namespace when available); never returns."""
    error, detail = None, ""
    try:
        _restrict_self(cfg, applied)
        _status({"isolation": ",".join(applied)})
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as exc:  # noqa: BLE001 - everything the program raises is its result
        error, detail = _classify(exc)
        if error is not None:
            try:  # the program's frames only
                traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
            except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
                pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as exc:  # noqa: BLE001
        error, detail = error or _classify(exc)[0], detail or f"{type(exc).__name__}: {exc}"
    _status({"error": error, "detail": detail})
    os._exit(0 if error is None else 1)


def launch(code: str, cfg: dict) -> None:
    """The outer launcher process: set up namespaces, fork the program process, report its exit."""
    os.environ.clear()
    os.environ.update(cfg["env"])
    applied: list[str] = []
    _setup_namespaces(cfg, applied)
    cfg["life_fd"], life_w = os.pipe()  # the launcher holds the write end until it exits
    pid = os.fork()
    if pid == 0:
        os.close(life_w)
        _run_program_process(code, cfg, applied)
    os.close(0), os.close(1), os.close(2)  # only the program holds the output pipes
    _, status = os.waitpid(pid, 0)
    _status({"exit": os.waitstatus_to_exitcode(status)})
    os._exit(0)


def _fork_server(sock: socket.socket) -> None:
    """Fork server loop: per request, fork a fresh launcher with the caller's pipes as fds 0-3."""
    for name in PRELOAD + ("ctypes", "resource"):  # once here instead of once per program
        __import__(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.closerange(STATUS_FD + 1, 1 << 16)
            req = json.loads(msg)
            launch(req["code"], req["cfg"])
        for fd in fds:
            os.close(fd)
        sock.sendall(f"{pid}\n".encode())


# --------------------------------------------------------------------------- parent side


_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_PYTHON = [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__)]
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


if __name__ == "__main__":  # launcher entry points (run with python -I -S: stdlib only)
    if sys.argv[1] == "--serve":
        _fork_server(socket.socket(fileno=int(sys.argv[2])))
    else:
        request = json.loads(sys.stdin.buffer.read())
        os.dup2(int(sys.argv[2]), STATUS_FD)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        launch(request["code"], request["cfg"])
