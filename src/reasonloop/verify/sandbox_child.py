"""The sandbox's child side: the launcher that isolates itself, then runs one program.

Run as a script with `python -I -S -B` by reasonloop.verify.sandbox (spawn mode: `--launch STATUS CONTROL`,
fork-server mode: `--serve SOCKET`), so it imports only the stdlib. See sandbox.py for what each layer does.

Processes: the launcher (trusted) starts a new session, unshares its namespaces, builds the program's
root filesystem (sandbox_root.py), then forks the program process, PID 1 of the new PID namespace. The
launcher's fds are 1/2 the program's stdout/stderr, 3 the program's status records (untrusted: the program
can write anything there) and 4 the control socket to the caller, which the program closes before its
code runs.
On control the caller sends the framed request and, to stop the program, shuts its side down; the
launcher sends ``started``, ``refused`` and ``exit`` records. The launcher reaps the program, and a PID
namespace's init is only reaped once every process in it is gone, so its exit record means nothing the
program started is left.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import traceback

if __name__ == "__main__":  # run as a script with python -I -S, whose folder is not on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_root as root
    del sys.path[0]
else:
    from reasonloop.verify import sandbox_root as root

NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
UID_BASE = 1_900_000_000  # far above any real account; uid = base + (parent pid % 100000) * 256 + slot
STATUS_FD, CONTROL_FD = 3, 4
MAX_PROGRAM_BYTES = 1 << 20  # a program's UTF-8 source; larger ones are refused before anything starts
MAX_CONFIG_BYTES = 1 << 16
FRAME = struct.Struct("<II")  # request header: config bytes, program bytes
FORBIDDEN_ERRNOS = {1, 11, 13, 30, 97, 100, 101, 111}  # EPERM EAGAIN EACCES EROFS EAFNOSUPPORT ENETDOWN ENETUNREACH ECONNREFUSED
# Imported before the program's uid drop, so programs start fast (the fork server has them loaded).
PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
           "operator", "re", "string", "random", "datetime", "heapq", "bisect", "numbers", "copy",
           "encodings.idna")  # idna: socket.getaddrinfo, so a connection attempt ends "forbidden"


class SandboxViolation(PermissionError):
    """Raised by the audit hook inside the sandbox."""


def _refusal(exc: BaseException) -> dict:
    kernel = getattr(exc, "kernel", True)  # OSError from /proc/self/uid_map, setuid, setrlimit: the kernel
    return {"refused": str(exc) if isinstance(exc, (root.Refused, OSError)) else f"{type(exc).__name__}: {exc}",
            "kernel": kernel}


_BLOCKED_EVENTS = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind", "pty.spawn")


def _audit(event, args):
    if event in _BLOCKED_EVENTS:
        raise SandboxViolation(f"forbidden: {event}")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _control(record: dict) -> None:
    try:
        os.write(CONTROL_FD, (json.dumps(record) + "\n").encode())
    except OSError:
        pass  # the caller is gone


def _leave_keyrings(libc, applied: list[str]) -> None:
    """Join a new, empty session keyring: the caller's is inherited, and whoever holds it may read its keys
    (Kerberos tickets, filesystem keys) whatever their uid."""
    import ctypes

    if libc.syscall(root.syscalls()[1]["keyctl"], 1, None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
        if ctypes.get_errno() not in (1, 38):  # EPERM, ENOSYS: no keyrings here (e.g. a container's seccomp)
            root.check(-1, "joining a new session keyring")
        return
    applied.append("keyring")


def _deny_syscalls(libc, applied: list[str]) -> None:
    """Install a seccomp filter: ``root.DENIED_SYSCALLS`` fail with EPERM, other ABIs (i386 or x32 on x86_64,
    say, whose numbers differ) with ENOSYS, everything else is allowed. Needs NO_NEW_PRIVS first."""
    import ctypes

    class Instruction(ctypes.Structure):  # struct sock_filter
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

    arch, numbers = root.syscalls()
    load, equal, at_least, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    denied = list(numbers.values())
    n = len(denied)  # jumps are relative: deny is the last instruction, index 5 + n + 1
    code = [(load, 0, 0, 4), (equal, 1, 0, arch), (ret, 0, 0, 0x00050026),  # seccomp_data.arch; else ENOSYS
            (load, 0, 0, 0), (at_least, n + 1, 0, 0x40000000)]  # seccomp_data.nr; x32 numbers: deny
    code += [(equal, n - i, 0, number) for i, number in enumerate(denied)]
    code += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050001)]  # allow; deny with EPERM
    instructions = (Instruction * len(code))(*code)
    program = Program(len(code), instructions)
    root.check(libc.prctl(22, 2, ctypes.byref(program), 0, 0), "installing the seccomp filter")  # SECCOMP_MODE_FILTER
    applied.append("seccomp")


def _unshare(libc, cfg: dict, applied: list[str]) -> None:
    flags = NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS
    if not cfg["userns"] and libc.unshare(flags) != 0:
        cfg["userns"] = True  # root without CAP_SYS_ADMIN: a user namespace may still be allowed
    if cfg["userns"]:
        uid, gid = os.getuid(), os.getgid()
        root.check(libc.unshare(flags | NEWUSER), "unshare(user, mount, pid, net, ipc, uts namespaces)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as f:  # become root of the new namespace, to mount
                    f.write(text)
            except OSError as exc:
                raise root.Refused(f"writing /proc/self/{name}: {exc.strerror}") from None
        applied.append("user")
    applied.extend(("mount", "pid", "net", "ipc", "uts"))
    root.check(libc.mount(None, b"/", None, root.MS_REC | root.MS_PRIVATE, None), "making mounts private")


def _restrict_self(cfg: dict, applied: list[str], life_fd: int) -> None:
    """In the program process: own process group, its root, limits, unprivileged identity."""
    import ctypes
    import resource

    os.setpgid(0, 0)  # kill(0, ...) reaches only the program; never a session leader: no terminal to acquire
    for name in PRELOAD:
        __import__(name)
    libc = _libc()
    root.enter_root(libc, cfg, applied)
    cpu = max(1, int(cfg["timeout_s"] + 0.999))
    mem = cfg["memory_mb"] * 2**20
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                       (resource.RLIMIT_FSIZE, (cfg["file_mb"] * 2**20,) * 2), (resource.RLIMIT_NOFILE, (64, 64)),
                       (resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_NPROC, (1, 1))):
        resource.setrlimit(res, value)
    applied.append("rlimits")
    if not cfg["userns"]:
        try:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        except OSError as exc:
            raise root.Refused(f"switching to uid {cfg['uid']}: {exc.strerror}") from None
        applied.append("uid")
    else:  # root of our own user namespace: uid 0 must never regain capabilities, then drop them all
        root.check(libc.prctl(28, 3, 0, 0, 0), "PR_SET_SECUREBITS")  # SECBIT_NOROOT | SECBIT_NOROOT_LOCKED
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # capset v3 header, two empty data words
        root.check(libc.capset(header, (ctypes.c_uint32 * 6)()), "dropping capabilities")
        applied.append("nocaps")
    root.check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")  # no setuid binaries, no regained caps on exec
    _deny_syscalls(libc, applied)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after setuid, which clears it)
    if select.select([life_fd], [], [], 0)[0]:
        os._exit(70)  # EOF on the life pipe: the launcher died before PDEATHSIG was armed
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large writes fail with EFBIG instead of killing
    os.closerange(CONTROL_FD + 1, 1 << 16)  # also the life pipe


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


def _run_program_process(code: str, cfg: dict, applied: list[str], life_fd: int) -> None:
    """Body of the program process (PID 1 of its namespace); never returns."""
    try:
        _restrict_self(cfg, applied, life_fd)
    except BaseException as exc:  # noqa: BLE001 - any setup failure means no isolation: refuse
        _control(_refusal(exc))
        os._exit(0)
    _control({"started": ",".join(applied)})
    os.close(CONTROL_FD)  # the program never holds the caller's control channel
    sys.addaudithook(_audit)
    error, detail = None, ""
    try:
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


def _read_exactly(fd: int, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, min(size - len(data), 1 << 20))
        if not chunk:
            os._exit(0)  # the caller went away before sending its request
        data += chunk
    return bytes(data)


def _supervise(pid: int, child_exited: int) -> None:
    """Wait for the program; kill it (with its whole PID namespace) when the caller stops or goes away."""
    poller = select.poll()
    poller.register(CONTROL_FD, select.POLLIN)
    poller.register(child_exited, select.POLLIN)  # SIGCHLD wakes it
    status = None
    try:
        while status is None:
            ready = {fd for fd, _ in poller.poll()}
            if child_exited in ready:
                os.read(child_exited, 4096)
                done, code = os.waitpid(pid, os.WNOHANG)
                status = code if done else None
            if status is None and CONTROL_FD in ready:  # the caller shut its side down (limit hit) or died
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]  # returns once the namespace is empty
    finally:
        if status is None:  # unreaped, so the pid is still the program's
            os.kill(pid, signal.SIGKILL)
    _control({"exit": os.waitstatus_to_exitcode(status)})


def launch(out: int, err: int, status: int, control: int) -> None:
    """The launcher process: read the request, isolate, fork the program process, supervise it."""
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in (out, err, status, control)]
    for target, fd in enumerate(high, start=1):
        os.dup2(fd, target)
    os.closerange(CONTROL_FD + 1, 1 << 16)
    null = os.open(os.devnull, os.O_RDWR)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    os.setsid()  # no controlling terminal for the launcher, nor for anything it starts
    os.umask(0o022)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg_size, code_size = FRAME.unpack(_read_exactly(CONTROL_FD, FRAME.size))
    if cfg_size > MAX_CONFIG_BYTES or code_size > MAX_PROGRAM_BYTES:
        _control({"refused": f"request of {cfg_size} + {code_size} bytes is over the limit", "kernel": False})
        os._exit(0)
    cfg = json.loads(_read_exactly(CONTROL_FD, cfg_size))
    code = _read_exactly(CONTROL_FD, code_size).decode("utf-8", "surrogatepass")
    os.environ.clear()
    os.environ.update(cfg["env"])
    applied = ["session"]
    try:
        libc = _libc()
        _leave_keyrings(libc, applied)
        _unshare(libc, cfg, applied)
        root.make_root(libc, cfg, applied)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the program cannot be isolated: refuse
        _control(_refusal(exc))
        os._exit(0)
    child_exited, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the poll in _supervise
    life_r, life_w = os.pipe()  # the launcher holds the write end until it exits
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(life_w)
        _run_program_process(code, cfg, applied, life_r)
    os.close(life_r)
    for fd in (0, 1, 2, STATUS_FD):
        os.close(fd)  # only the program holds its output channels
    _supervise(pid, child_exited)
    os._exit(0)


def _fork_server(sock: socket.socket) -> None:
    """Fork server loop: per request (one byte, four fds), fork a launcher; reply one byte (+ its pidfd)."""
    for name in PRELOAD + ("ctypes", "resource", "fcntl"):  # once here instead of per program
        __import__(name)
    root.root_layout()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's Ctrl-C is the caller's; we exit on EOF
    while True:
        try:
            msg, fds, flags, _ = socket.recv_fds(sock, 1, 4)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        pid = -1
        if len(fds) == 4 and not flags & socket.MSG_CTRUNC:
            try:
                pid = os.fork()
            except OSError:
                pass
            if pid == 0:
                try:
                    sock.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    launch(*fds)
                finally:
                    os._exit(1)  # never back into the server loop
        reply, pidfd = (b"+", []) if pid > 0 else (b"-", [])
        if pid > 0 and hasattr(os, "pidfd_open"):
            try:  # the launcher waits for the caller's request, so it cannot have exited yet
                pidfd = [os.pidfd_open(pid)]
            except OSError:
                pass
        for fd in fds:
            os.close(fd)
        socket.send_fds(sock, [reply], pidfd)
        for fd in pidfd:
            os.close(fd)


if __name__ == "__main__":  # launcher entry points (run with python -I -S: stdlib only)
    if sys.argv[1] == "--serve":
        _fork_server(socket.socket(fileno=int(sys.argv[2])))
    else:
        launch(1, 2, int(sys.argv[2]), int(sys.argv[3]))
