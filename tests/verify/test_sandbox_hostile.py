"""Sandbox against the attacks of the hostile review: the caller's terminal, other output channels, programs
that outlive the call, the caller's own processes, host sockets and private files, large programs, and
machines where it cannot isolate (a rootless container, no user namespaces).

Callers that need a terminal, another user or a user namespace run as a subprocess made here: a pty from
``os.openpty()`` as its controlling terminal, ``nobody`` (uid 65534), or uid 0 of a user namespace that maps
only uids 0-65535 (what a rootless container sees). These need root, as CI on this machine is.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reasonloop.verify.sandbox import MAX_PROGRAM_BYTES, UID_BASE, SandboxUnavailable, run_program
from reasonloop.verify.sandbox_root import stdlib_unreadable

pytestmark = pytest.mark.usefixtures("sandbox_leaves_nothing")
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="makes other users, ptys and user namespaces: root only")
SRC = str(Path(__file__).resolve().parents[2] / "src")
NOBODY = 65534
LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
# Opens every terminal it can name (without O_NOCTTY, so a session leader would also acquire it) and
# pushes a command into its input queue with TIOCSTI, as if typed.
TTY_ATTACK = LIBC + """import sys
for path in ["/dev/tty", "/dev/console", "/dev/ptmx"] + sys.argv[1:] + [f"/dev/pts/{i}" for i in range(8)]:
    fd = libc.open(path.encode(), 2)
    if fd < 0:
        print(path, "closed")
        continue
    sent = sum(libc.ioctl(fd, 0x5412, ctypes.c_char_p(bytes([c]))) == 0 for c in b"echo PWNED\\n")
    print(path, "open", sent)
for fd in (0, 1, 2, 3):
    print(fd, "tiocsti", libc.ioctl(fd, 0x5412, ctypes.c_char_p(b"x")))
"""
# The caller becomes the session leader of a pty (its controlling terminal), as a login shell is.
ON_A_TERMINAL = """import fcntl, json, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
os.close(os.open("/dev/tty", os.O_RDWR))  # the caller does have a terminal
from reasonloop.verify.sandbox import run_program
"""


def _python_for(uid: int) -> str:
    """An interpreter ``uid`` can run (this venv's may sit under root's 0700 home)."""
    candidates = (sys.executable, getattr(sys, "_base_executable", ""), shutil.which("python3"), "/usr/bin/python3")
    for exe in candidates:
        try:
            if exe and subprocess.run([exe, "-c", "import socket; socket.send_fds"], user=uid, group=uid,
                                      extra_groups=[], capture_output=True).returncode == 0:
                return exe
        except OSError:
            continue  # e.g. under a home folder that uid cannot enter
    pytest.skip(f"no Python interpreter here that uid {uid} can run")


def _caller_on_a_pty(script: str, *args: str, uid: int | None = None):
    """Run ``script`` as a caller whose controlling terminal is a fresh pty; return its exit status,
    stdout, stderr, and every byte that reached the terminal's input queue (echoed to the master)."""
    master, slave = os.openpty()
    if uid is not None:
        os.fchown(slave, uid, -1)  # the caller's own terminal, as a user's login terminal is
    python = sys.executable if uid is None else _python_for(uid)
    ids = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    proc = subprocess.run([python, "-c", ON_A_TERMINAL + script, *args], stdin=slave, capture_output=True,
                          start_new_session=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=300,
                          **ids)
    injected = b""
    os.set_blocking(slave, False)
    for fd in (master, slave):  # echo of injected input, and the input itself, still queued
        while select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            injected += chunk
    os.close(master)
    os.close(slave)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(), injected


@needs_root
def test_program_cannot_reach_the_callers_terminal():
    script = """from reasonloop.tasks.base import Problem
from reasonloop.verify.pot import pot_reward
code, pts = sys.argv[1], os.ttyname(0)
out = [run_program(code.replace("sys.argv[1:]", repr([pts])), mode=m).stdout for m in ("fork", "spawn")]
pot_reward(["```python\\n" + code.replace("sys.argv[1:]", repr([pts])) + "\\n```"], [Problem("p", "q", "1")])
print(json.dumps(out))
"""
    rc, out, err, injected = _caller_on_a_pty(script, TTY_ATTACK)
    assert rc == 0, err
    assert injected == b""  # nothing was typed into the caller's terminal (fork, spawn, PoT reward)
    for stdout in json.loads(out):
        assert "/dev/tty closed" in stdout and " open " not in stdout, stdout
        assert all(line.endswith("-1") for line in stdout.splitlines() if "tiocsti" in line), stdout


NOBODY_CALLER = """import glob
from reasonloop.verify.sandbox import run_program
secret, sock_path = sys.argv[1], sys.argv[2]
def others():  # processes of this user other than the caller and its fork server, right now
    import reasonloop.verify.sandbox as sb
    mine = {os.getpid(), sb._server.proc.pid if sb._server else None}
    found = []
    for path in glob.glob("/proc/[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in open(path) if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == os.getuid() and int(path.split("/")[2]) not in mine \\
                and not fields["State"].strip().startswith("Z"):
            found.append(path)
    return found
results = {}
for name, code, kwargs in json.loads(sys.argv[3]):
    code = code.replace("SECRET", secret).replace("SOCK", sock_path).replace("sys.argv[1:]", repr([os.ttyname(0)]))
    r = run_program(code, **kwargs)
    results[name] = {"ok": r.ok, "error": r.error, "stdout": r.stdout, "detail": r.detail, "left": others(),
                     "isolation": r.isolation}
print(json.dumps(results))
"""
NOBODY_PROGRAMS = [
    ("kill_group", "import os\nos.kill(0, 9)", {}),
    ("read_secret", "print(open('SECRET').read())", {}),
    ("connect", LIBC + "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('SOCK')\nprint('connected')", {}),
    ("raw_connect", LIBC + "import struct\nfd = libc.socket(1, 1, 0)\naddr = struct.pack('H108s', 1, b'SOCK')\n"
                           "print('connect', libc.connect(fd, addr, len(addr)))", {}),
    ("forks", LIBC + "made = 0\nfor _ in range(20):\n    pid = libc.fork()\n    if pid == 0:\n        libc._exit(0)\n"
                     "    made += pid > 0\nprint(made)", {}),
    ("outlive", LIBC + "import time\nlibc.prctl(1, 0, 0, 0, 0)\ntime.sleep(60)", {"timeout_s": 0.5}),
    ("outlive_spawn", LIBC + "import time\nlibc.prctl(1, 0, 0, 0, 0)\ntime.sleep(60)", {"timeout_s": 0.5,
                                                                                           "mode": "spawn"}),
    ("tty", TTY_ATTACK, {}),
]


@needs_root
def test_non_root_caller_keeps_its_processes_files_sockets_and_terminal():
    home = Path(tempfile.mkdtemp(prefix="reasonloop-home-"))  # a user's home: its files are 0600
    try:
        os.chmod(home, 0o755)
        secret = home / "secret.txt"
        secret.write_text("the user's private token")
        os.chmod(secret, 0o600)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(home / "agent.sock"))  # like an ssh-agent or a desktop session socket
        listener.listen()
        listener.setblocking(False)
        for path in (home, secret, home / "agent.sock"):
            os.chown(path, NOBODY, NOBODY)
        rc, out, err, injected = _caller_on_a_pty(NOBODY_CALLER, str(secret), str(home / "agent.sock"),
                                                  json.dumps(NOBODY_PROGRAMS), uid=NOBODY)
        assert rc == 0, f"the caller died (status {rc}): {err}"  # kill(0, SIGKILL) used to kill it
        results = json.loads(out)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no program reached the user's socket
        listener.close()
    finally:
        shutil.rmtree(home)
    assert injected == b""
    assert "user" in results["kill_group"]["isolation"]  # the non-root path: a user namespace
    assert "private token" not in out
    assert not results["read_secret"]["ok"]
    assert "connected" not in results["connect"]["stdout"] and "connect 0" not in results["raw_connect"]["stdout"]
    assert results["forks"]["stdout"] == "0\n"
    for name in ("outlive", "outlive_spawn"):
        assert results[name]["error"] == "timeout"
    assert all(r["left"] == [] for r in results.values()), results  # nothing outlived its call
    assert "/dev/tty closed" in results["tty"]["stdout"] and " open " not in results["tty"]["stdout"]


# The caller holds a secret in its session keyring, which every process it starts inherits.
KEYRING_CALLER = """import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
keyctl, add_key = {"x86_64": (250, 248), "aarch64": (219, 217)}[os.uname().machine]
if libc.syscall(keyctl, 1, None) < 0:  # a session keyring of its own, not the test runner's
    sys.exit(77)
key = libc.syscall(add_key, b"user", b"reasonloop-secret", b"caller-secret", 13, ctypes.c_int(-3))
from reasonloop.verify.sandbox import run_program
code = ("import ctypes\\nlibc = ctypes.CDLL(None)\\nbuf = ctypes.create_string_buffer(64)\\n"
        f"print(libc.syscall({keyctl}, 11, {key}, buf, 64), buf.value)\\nprint(open('/proc/keys').read())")
print(json.dumps([run_program(code, mode=m).stdout for m in ("fork", "spawn")]))
"""


@needs_root
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="keyctl numbers for x86_64, aarch64")
@pytest.mark.parametrize("uid", [0, NOBODY])
def test_callers_keyring_is_out_of_reach(uid):
    proc = subprocess.run([_python_for(uid), "-c", KEYRING_CALLER], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": SRC}, user=uid, group=uid, extra_groups=[])
    if proc.returncode == 77:
        pytest.skip("no keyrings here")
    assert proc.returncode == 0, proc.stderr
    for stdout in json.loads(proc.stdout):
        assert "caller-secret" not in stdout and "reasonloop-secret" not in stdout, stdout


def test_kernel_interfaces_a_program_does_not_need_are_refused():
    from reasonloop.verify.sandbox_root import syscalls

    numbers = syscalls()[1]
    code = LIBC + "import errno, os\n" + "".join(
        f"print({name!r}, libc.syscall({numbers[name]}, 0, 0, 0, 0, 0), errno.errorcode[ctypes.get_errno()])\n"
        for name in ("keyctl", "add_key", "unshare", "setns", "mount", "ptrace", "bpf", "perf_event_open",
                     "userfaultfd", "io_uring_setup", "open_tree", "fsopen"))
    r = run_program(code + "print(os.getpid(), open('/dev/null').read() == '')")
    lines = r.stdout.splitlines()
    assert r.ok and all(line.endswith("-1 EPERM") for line in lines[:-1]) and lines[-1] == "1 True", r.stdout
    assert "seccomp" in r.isolation


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 system calls from x86_64 machine code")
def test_other_system_call_abis_are_refused():
    # keyctl(KEYCTL_GET_KEYRING_ID, session) through int 0x80, the i386 entry, whose numbers differ (288):
    # push rbx; mov eax, 288; mov ebx, 0; mov ecx, -3; xor edx, edx; int 0x80; pop rbx; ret
    machine_code = bytes.fromhex("53b820010000bb00000000b9fdffffff31d2cd805bc3")
    code = LIBC + (f"import mmap\nm = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
                   f"m.write({machine_code!r})\nf = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof("
                   "ctypes.c_char.from_buffer(m)))\nprint(f())")
    r = run_program(code)
    assert r.ok and r.stdout == "-38\n", r  # ENOSYS: no keyring id


# uid 0 of a user namespace mapping only uids 0-65535, as in a rootless container; optionally with user
# namespaces disabled inside it (``max_user_namespaces`` 0), as where unprivileged ones are turned off.
IN_A_ROOTLESS_CONTAINER = """import ctypes, os, sys
max_namespaces, script = sys.argv[1], sys.argv[2]
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
        os._exit(90)
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    if max_namespaces:
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write(max_namespaces)
    os.execv(sys.executable, [sys.executable, "-c", script])
os.read(ready_r, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 65536")
os.write(go_w, b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
CONTAINER_CALLER = """import json, os, tempfile
from reasonloop.verify.sandbox import SandboxUnavailable, run_program
try:
    r = run_program("import os\\nprint(6 * 7, os.getuid())")
    out = {"ok": r.ok, "stdout": r.stdout, "isolation": r.isolation}
except SandboxUnavailable as err:
    out = {"refused": str(err)}
out["leaked"] = os.listdir(tempfile.gettempdir())  # a private, empty TMPDIR before
print(json.dumps(out))
"""


def _in_a_rootless_container(max_namespaces: str = "") -> tuple[dict, str]:
    private_tmp = tempfile.mkdtemp()  # the fixture's private temporary folder
    proc = subprocess.run([sys.executable, "-c", IN_A_ROOTLESS_CONTAINER, max_namespaces, CONTAINER_CALLER],
                          capture_output=True, env={"PYTHONPATH": SRC, "TMPDIR": private_tmp}, timeout=120)
    os.rmdir(private_tmp)  # fails if anything was left in it
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout), proc.stderr.decode()


@needs_root
def test_runs_in_a_rootless_container():
    out, stderr = _in_a_rootless_container()
    assert (out.get("ok"), out.get("stdout")) == (True, "42 0\n"), out  # used to raise OSError EINVAL (chown)
    assert "user" in out["isolation"] and "nocaps" in out["isolation"]
    assert out["leaked"] == [] and stderr == ""


@needs_root
def test_refuses_in_one_line_where_it_cannot_isolate():
    out, stderr = _in_a_rootless_container(max_namespaces="0")
    message = out.get("refused", "")
    assert message.startswith("sandbox: cannot isolate programs on this machine (unshare(user, mount"), out
    assert "No space left on device" in message and "user namespaces" in message
    assert "\n" not in message and out["leaked"] == [] and stderr == ""
    assert issubclass(SandboxUnavailable, __import__("reasonloop.errors").errors.UserError)  # CLI: one line, exit 2


def test_refuses_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(SandboxUnavailable) as refused:
        run_program("print(1)")
    assert str(refused.value) == ("sandbox: programs run only on Linux (it needs Linux namespaces); this is darwin. "
                                  "No program is run without isolation.")


def test_unreadable_standard_library_is_named(tmp_path):
    (tmp_path / "os.py").write_text("")
    os.chmod(tmp_path, 0o700)
    assert stdlib_unreadable(str(tmp_path)) == (
        f"the Python standard library {tmp_path} is not readable by other users (mode 0o700), so programs "
        f"run as an unprivileged uid could not import it: chmod -R o+rX {tmp_path}, or use another Python")
    os.chmod(tmp_path, 0o755)
    assert stdlib_unreadable(str(tmp_path)) is None


@needs_root
@pytest.mark.parametrize("home", ["~", "/tmp"])
def test_stdlib_behind_a_symlink(home):
    """A Python whose stdlib folder is a symlink into /usr imports it by the link's path, so that path must
    exist inside. Under /tmp it cannot (each program's /tmp is its own): a one-line refusal instead."""
    system = "/usr/bin/python3"
    if not os.path.exists(system):
        pytest.skip("needs a system Python in /usr/bin")
    real = os.path.realpath(system)
    stdlib = subprocess.run([real, "-I", "-S", "-c", "import os; print(os.path.dirname(os.__file__))"],
                            capture_output=True, text=True).stdout.strip()
    prefix = Path(tempfile.mkdtemp(prefix="reasonloop-python-", dir=os.path.expanduser(home)))
    try:
        (prefix / "bin").mkdir()
        (prefix / "lib").mkdir()
        os.link(real, prefix / "bin" / os.path.basename(real))  # a hard link: Python finds its prefix here
        os.symlink(stdlib, prefix / "lib" / os.path.basename(stdlib))
        script = ("from reasonloop.verify.sandbox import SandboxUnavailable, run_program\ntry:\n"
                  "    r = run_program('import typing\\nprint(typing.__file__)')\n"
                  "    print(r.ok, r.stdout.strip(), r.detail)\n"
                  "except SandboxUnavailable as err:\n    print('refused:', err)")
        out = subprocess.run([str(prefix / "bin" / os.path.basename(real)), "-c", script], capture_output=True,
                             text=True, env={"PYTHONPATH": SRC}, timeout=60)
    finally:
        shutil.rmtree(prefix)
    inside = f"{prefix}/lib/{os.path.basename(stdlib)}"
    if home == "~":
        assert (out.stdout, out.stderr) == (f"True {inside}/typing.py \n", "")
    else:
        assert out.stdout == (f"refused: sandbox: cannot isolate programs on this machine (the Python standard "
                              f"library {inside} is under /tmp, which each program gets an empty, private copy of: "
                              "use a Python installed elsewhere). No program is run without isolation.\n"), out.stderr


def test_stdlib_imports_work_inside():
    # This machine's Python lives under /root (0700): the program's uid cannot traverse it on the host.
    r = run_program("import typing, dataclasses, json, enum, textwrap, fcntl\nprint(dataclasses.is_dataclass(1))")
    assert (r.ok, r.stdout) == (True, "False\n"), r


def test_private_tmp_run_and_home():
    markers = []
    for folder in ("/tmp", "/run", os.path.expanduser("~"), "/var/tmp"):
        path = os.path.join(folder, f"reasonloop-private-{os.getpid()}")
        try:
            Path(path).write_text("host secret")
        except OSError:
            continue  # not writable here
        markers.append(path)
    try:
        code = ("import os\nfor p in %r:\n    try:\n        print(open(p).read())\n    except OSError as e:\n"
                "        print(type(e).__name__)\nprint(os.listdir('/tmp'), os.getcwd(), os.environ['HOME'])\n"
                "print([d for d in ('/run', '/home', '/var', '/root') if os.path.exists(d) and os.listdir(d)])\n"
                % (markers,))
        r = run_program(code)
    finally:
        for path in markers:
            os.remove(path)
    assert markers and r.ok, r
    assert "host secret" not in r.stdout
    stdlib = os.path.dirname(os.__file__)  # its path is recreated inside, holding only the stdlib
    expected = [d for d in ("/run", "/home", "/var", "/root") if stdlib.startswith(d + "/")]
    assert r.stdout.splitlines()[-2:] == ["[] /tmp /tmp", str(expected)]


def test_host_unix_sockets_are_unreachable(tmp_path):
    path = f"/tmp/reasonloop-sock-{os.getpid()}"  # the host's /tmp, like /tmp/.X11-unix
    listeners = []
    for address in (path, f"\0reasonloop-sock-{os.getpid()}"):  # a file in the host's /tmp; abstract
        s = socket.socket(socket.AF_UNIX)
        s.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, 0o777)  # anyone may connect, like /tmp/.X11-unix/X0
        s.listen()
        s.setblocking(False)
        listeners.append(s)
    try:
        for address in (path, f"\0reasonloop-sock-{os.getpid()}"):
            raw = LIBC + (f"import struct\nfd = libc.socket(1, 1, 0)\n"
                          f"addr = struct.pack('H108s', 1, {address.encode()!r})\n"
                          f"print('connect', libc.connect(fd, addr, 2 + {len(address)}))")
            r = run_program(raw)
            assert "connect 0" not in r.stdout, (address, r)
            r = run_program(f"import socket\nsocket.socket(socket.AF_UNIX).connect({address!r})")
            assert (r.ok, r.error) == (False, "forbidden"), r
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in listeners:
            s.close()
        os.remove(path)


def test_program_cannot_write_on_the_launchers_channel():
    code = "import os\nopen_fds = []\nfor fd in range(64):\n    try:\n        os.fstat(fd)\n" \
           "        open_fds.append(fd)\n    except OSError:\n        pass\nprint(open_fds)"
    assert run_program(code).stdout == "[0, 1, 2, 3]\n"  # stdin, stdout, stderr, its own status records


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_status_channel_flood_is_capped_and_quick(mode):
    t0 = time.perf_counter()
    r = run_program("import os\nwhile True:\n    os.write(3, b'x' * 65536)", timeout_s=2.0, mode=mode)
    assert (r.ok, r.error) == (False, "output too large"), r
    assert time.perf_counter() - t0 < 2.0  # stopped at the cap, not at the timeout


def test_timeout_holds_whatever_the_program_writes():
    # Under every cap, but never done: stdout and stderr in tiny writes, as fast as it can.
    code = "import os, sys\nwhile True:\n    sys.stdout.write('.')\n    sys.stdout.flush()\n    os.write(2, b'!')"
    t0 = time.perf_counter()
    r = run_program(code, timeout_s=0.5, max_output=1 << 30)
    assert r.error == "timeout" and time.perf_counter() - t0 < 3.0, r


@pytest.mark.parametrize("mode", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["timeout", "output", "closed"])
def test_nothing_outlives_the_call(mode, how, live_sandbox_processes):
    # The program clears its parent-death signal, so only killing its PID namespace stops it; "closed":
    # it closes every channel it holds, then keeps running.
    end = {"timeout": "time.sleep(60)", "output": "while True:\n    print('x' * 1000)",
           "closed": "import os\nfor fd in (0, 1, 2, 3):\n    os.close(fd)\ntime.sleep(60)"}[how]
    code = LIBC + f"import time\nlibc.prctl(1, 0, 0, 0, 0)\nlibc.signal(15, 1)\n{end}"
    r = run_program(code, timeout_s=0.5, max_output=10_000, mode=mode)
    assert r.error == ("output too large" if how == "output" else "timeout")
    assert live_sandbox_processes() == []  # at once, not after a grace period


DYING_CALLER = """import sys
from reasonloop.verify.sandbox import run_program
code = "import ctypes, time\\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\\nprint('running', flush=True)\\ntime.sleep(60)"
run_program(code, timeout_s=60, mode=sys.argv[1])
"""


@needs_root
@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_programs_die_with_their_caller(mode):
    """A caller killed mid-run (an RL trainer crashing, say) takes its programs with it."""
    caller = subprocess.Popen([sys.executable, "-c", DYING_CALLER, mode], env={"PYTHONPATH": SRC})
    first_uid = UID_BASE + (caller.pid % 100_000) * 256

    def programs() -> list[int]:
        found = []
        for path in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
            except OSError:
                continue
            if first_uid <= int(fields["Uid"].split()[0]) < first_uid + 256 and fields["State"].strip()[0] not in "ZX":
                found.append(int(path.parent.name))
        return found

    deadline = time.monotonic() + 30
    while not programs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert programs(), "the program never started"
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 5
    while programs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert programs() == []


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_large_programs_run_and_too_large_ones_are_named(mode, live_sandbox_processes):
    for size in (64 * 1024, 200 * 1024, MAX_PROGRAM_BYTES):
        code = "x = 7\nprint(x * 6)\n"
        code += "#" * (size - len(code) - 1) + "\n"
        r = run_program(code, mode=mode)
        assert (r.ok, r.stdout) == (True, "42\n"), (size, r.detail)
    r = run_program("#" * (MAX_PROGRAM_BYTES + 1), mode=mode)
    assert (r.ok, r.error) == (False, "program too large")
    assert r.detail == f"the program is {MAX_PROGRAM_BYTES + 1} bytes; the sandbox runs programs of at most " \
                       f"{MAX_PROGRAM_BYTES} bytes"
    t = run_program("import time\ntime.sleep(30)", timeout_s=0.5, mode=mode)  # replies still in step
    assert t.error == "timeout" and live_sandbox_processes() == []


def test_large_programs_leave_the_callers_stderr_clean():
    script = ("from reasonloop.verify.sandbox import run_program\n"
              "big = 'print(1)\\n' + '#' * 100_000\n"
              "print([run_program(c, timeout_s=t).error for c, t in ((big, 5), ('while True: pass', 0.5), (big, 5))])")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env={"PYTHONPATH": SRC}, timeout=120)
    assert (proc.stdout.decode(), proc.stderr.decode()) == ("[None, 'timeout', None]\n", "")


def test_a_dead_fork_server_is_replaced(monkeypatch):
    from reasonloop.verify import sandbox

    assert run_program("print(1)").ok
    dead = sandbox._server
    dead.proc.kill()
    dead.proc.wait()
    monkeypatch.setattr(dead.proc, "poll", lambda: None)  # it died after the liveness check: the request fails
    r = run_program("print(2)")
    assert (r.ok, r.stdout) == (True, "2\n") and sandbox._server is not dead
