"""The sandboxed program's root filesystem: what it holds, how the launcher builds it, how the program
enters it. Part of the launcher (stdlib only; see sandbox_child.py).

It holds only the read-only ``SYSTEM_PATHS``, the interpreter's standard library at the paths Python
looks it up under, five devices, a fresh /proc and a private, size-capped /tmp. The host's /tmp, /run,
/home, /root, /dev/tty, /dev/pts and their Unix sockets are not there.
"""

from __future__ import annotations

import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# Flags a bind remount must repeat: inside a user namespace the kernel refuses to clear them ("locked").
_MS_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
             "relatime": 1 << 21, "strictatime": 1 << 24}

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
# System calls a program is refused (EPERM) by its seccomp filter: keyrings (on the non-root path the program
# has the caller's uid, which may own readable keys) and namespace, mount, tracing and kernel interfaces no
# program needs. Numbers from the kernel's unistd headers; riscv64 and aarch64 share the generic table.
DENIED_SYSCALLS = ("keyctl", "add_key", "request_key", "unshare", "setns", "mount", "umount2", "pivot_root",
                   "chroot", "ptrace", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "open_tree",
                   "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr")
_GENERIC = (219, 217, 218, 97, 268, 40, 39, 41, 51, 117, 280, 241, 282, 425, 428, 429, 430, 431, 432, 433, 442)
SYSCALLS = {  # machine: (AUDIT_ARCH_*, numbers in DENIED_SYSCALLS order)
    "x86_64": (0xC000003E, (250, 248, 249, 272, 308, 165, 166, 155, 161, 101, 321, 298, 323, 425, 428, 429, 430,
                            431, 432, 433, 442)),
    "aarch64": (0xC00000B7, _GENERIC),
    "riscv64": (0xC00000F3, _GENERIC),
}


class Refused(Exception):
    """This machine cannot give the program its isolation; the message names the step that failed.
    ``kernel``: the kernel refused a namespace, mount or identity step (the caller adds how to allow it)."""

    def __init__(self, message: str, kernel: bool = True) -> None:
        super().__init__(message)
        self.kernel = kernel


def syscalls() -> tuple[int, dict[str, int]]:
    """(audit arch, number of each of ``DENIED_SYSCALLS``) for this machine."""
    machine = os.uname().machine
    if machine not in SYSCALLS:
        raise Refused(f"no system call table for {machine} (known: {', '.join(SYSCALLS)})", kernel=False)
    arch, numbers = SYSCALLS[machine]
    return arch, dict(zip(DENIED_SYSCALLS, numbers))


def check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        raise Refused(f"{what}: {os.strerror(ctypes.get_errno())}")


_layout: tuple | None = None


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def root_layout() -> tuple[str, list[tuple[str, str]], list[tuple[str, bool]], str | None]:
    """(staging dir, symlinks to recreate, binds as (path, is a dir), why it cannot be built or None): the
    system paths, the stdlib (``sys.path`` of this ``-I -S`` interpreter) at the paths Python looks them up
    under, and the devices. Computed once per fork server."""
    global _layout
    if _layout is not None:
        return _layout
    links = [("/dev/fd", "/proc/self/fd")] + [(f"/dev/{n}", f"/proc/self/fd/{i}")
                                              for i, n in enumerate(("stdin", "stdout", "stderr"))]
    binds, shown = [(f"/dev/{n}", False) for n in DEVICES], []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):  # e.g. /bin -> usr/bin, /etc/localtime
            links.append((path, os.readlink(path)))
        elif os.path.exists(path):
            binds.append((path, os.path.isdir(path)))
        shown.append(path)
    problem = None
    for path in map(os.path.normpath, sys.path):
        if not os.path.exists(path) or any(_under(path, s) for s in shown):
            continue
        if _under(path, "/tmp"):
            problem = (f"the Python standard library {path} is under /tmp, which each program gets an empty, "
                       "private copy of: use a Python installed elsewhere")
        binds.append((path, os.path.isdir(path)))
        shown.append(path)
    sources = [p for p, _ in binds] + [os.path.realpath(p) for p, _ in binds]
    stage = next((d for d in ("/tmp", "/mnt", "/var/tmp", "/srv", "/opt", "/media")
                  if os.path.isdir(d) and not any(_under(src, d) for src in sources)), None)
    if stage is None:
        problem = problem or "no empty directory (/tmp, /mnt, ...) to build the program's root in"
    _layout = stage, links, binds, problem
    return _layout


def stdlib_unreadable(directory: str) -> str | None:
    """Why a program run as another uid could not import the standard library in ``directory``; None if it can."""
    for path, need in ((directory, 0o005), (os.path.join(directory, "os.py"), 0o004)):
        mode = os.stat(path).st_mode & 0o777
        if mode & need != need:
            return (f"the Python standard library {directory} is not readable by other users (mode {oct(mode)}), "
                    f"so programs run as an unprivileged uid could not import it: chmod -R o+rX {directory}, "
                    "or use another Python")
    return None


def _mount_point(path: str, directory: bool) -> None:
    os.makedirs(path if directory else os.path.dirname(path), 0o755, exist_ok=True)
    if not directory:
        open(path, "w").close()


def make_root(libc, cfg: dict, applied: list[str]) -> None:
    """Build the program's root filesystem under a staging tmpfs (entered by the program: ``enter_root``)."""
    unreadable = None if cfg["userns"] else stdlib_unreadable(os.path.dirname(os.__file__))
    if unreadable:
        raise Refused(unreadable, kernel=False)
    stage, links, binds, problem = root_layout()
    if problem:
        raise Refused(problem, kernel=False)
    cfg["stage"] = stage
    check(libc.mount(b"tmpfs", stage.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"),
           "mounting the root tmpfs")
    for path, target in links:
        os.makedirs(os.path.dirname(stage + path), 0o755, exist_ok=True)
        os.symlink(target, stage + path)
    for path, directory in binds:
        _mount_point(stage + path, directory)
        check(libc.mount(path.encode(), (stage + path).encode(), None, MS_BIND | MS_REC, None), f"binding {path}")
    for name in ("proc", "tmp"):
        os.mkdir(f"{stage}/{name}", 0o755)
    owner = "" if cfg["userns"] else f",uid={cfg['uid']},gid={cfg['uid']}"
    check(libc.mount(b"tmpfs", f"{stage}/tmp".encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      f"size={cfg['scratch_mb']}m,mode=0700{owner}".encode()), "mounting the /tmp tmpfs")
    _remount_readonly(libc, stage, keep={f"{stage}/tmp"} | {f"{stage}/dev/{n}" for n in DEVICES})
    applied.extend(("root", "tmpfs"))


def _remount_readonly(libc, stage: str, keep: set[str]) -> None:
    """The staging tmpfs and every mount under it but ``keep``: read-only, nosuid, nodev (keeping locked flags)."""
    check(libc.mount(None, stage.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      None), "read-only remount of the root tmpfs")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")
        if target in keep or not target.startswith(stage + "/"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
        for opt in fields[5].split(","):
            flags |= _MS_FLAGS.get(opt, 0)
        check(libc.mount(None, target.encode(), None, flags, None), f"read-only remount of {target[len(stage):]}")


def enter_root(libc, cfg: dict, applied: list[str]) -> None:
    """In the program process (PID 1 of its namespace): mount its /proc, pivot into the built root."""
    stage = cfg["stage"]
    if libc.mount(b"proc", f"{stage}/proc".encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0:
        applied.append("proc")  # refused e.g. where the host's /proc is partly covered; then there is none
        for name in ("keys", "key-users"):  # key names and owners of the uid's keyrings: nothing to see
            target = f"{stage}/proc/{name}".encode()
            check(libc.mount(b"/dev/null", target, None, MS_BIND, None), f"hiding /proc/{name}")
    os.chdir(stage)
    check(libc.syscall(syscalls()[1]["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", 2), "detaching the host's root")  # MNT_DETACH
    os.chdir("/tmp")
