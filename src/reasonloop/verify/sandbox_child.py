"""The sandbox's child side: the launcher that isolates itself, then runs one program.

Run as a script with `python -I -S -B` by reasonloop.verify.sandbox (spawn mode: `--launch FD`, fork-server
mode: `--serve FD`), so it imports only the stdlib. See sandbox.py for what each layer does.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import traceback

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


if __name__ == "__main__":  # launcher entry points (run with python -I -S: stdlib only)
    if sys.argv[1] == "--serve":
        _fork_server(socket.socket(fileno=int(sys.argv[2])))
    else:
        request = json.loads(sys.stdin.buffer.read())
        os.dup2(int(sys.argv[2]), STATUS_FD)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        launch(request["code"], request["cfg"])

