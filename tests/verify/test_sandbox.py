"""Sandbox: hostile programs are contained with a clear error; the caller and machine stay as before.

Assertions are about containment (the effect did not happen), not about which mechanism stopped it.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest

from reasonloop.verify.sandbox import ProgramResult, _records, _result, run_program, run_programs
from reasonloop.verify.sandbox_child import SandboxViolation, _classify

LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"


pytestmark = pytest.mark.usefixtures("sandbox_leaves_nothing")  # tests/verify/conftest.py


def test_runs_a_program_and_reports_isolation():
    r = run_program("import math\nprint(math.factorial(5))")
    assert (r.ok, r.stdout, r.error, r.returncode) == (True, "120\n", None, 0)
    assert r.isolation  # names what was applied, e.g. "mount,net,pid,...,rlimits,uid"
    assert "rlimits" in r.isolation


def test_crash_is_reported_with_the_exception():
    r = run_program("x = 1\nprint('before')\nprint(x / 0)")
    assert (r.ok, r.error, r.stdout) == (False, "crash", "before\n")
    assert r.detail == "ZeroDivisionError: division by zero"
    assert 'File "<program>", line 3' in r.stderr


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_infinite_loop_times_out(mode):
    t0 = time.perf_counter()
    r = run_program("while True:\n    pass", timeout_s=0.4, mode=mode)
    assert (r.ok, r.error) == (False, "timeout")
    assert time.perf_counter() - t0 < 8.0


def test_sleeping_program_times_out():
    r = run_program("import time\ntime.sleep(60)", timeout_s=0.5)
    assert r.error == "timeout" and r.seconds < 6.0


@pytest.mark.parametrize("code", ["x = bytearray(8 * 2**30)",
                                  "a = []\nwhile True:\n    a.append(bytearray(32 * 2**20))"])
def test_memory_bomb_is_stopped(code):
    r = run_program(code, memory_mb=256, timeout_s=5.0)
    assert (r.ok, r.error) == (False, "memory")


def test_fork_bomb_through_os_is_forbidden():
    r = run_program("import os\nwhile True:\n    os.fork()")
    assert (r.ok, r.error) == (False, "forbidden")
    assert "fork" in r.detail


def test_forks_through_raw_libc_all_fail():
    # Bypasses the audit hook; the kernel's limits must stop it. Tiny bound: children exit at once.
    code = LIBC + "made = 0\nfor _ in range(20):\n    pid = libc.fork()\n    if pid == 0:\n        libc._exit(0)\n" \
                  "    made += pid > 0\nprint(made)"
    r = run_program(code)
    assert r.ok and r.stdout == "0\n"


def test_endless_raw_fork_bomb_is_contained():
    # Safe by construction: stops at once if a single fork succeeds (containment broken).
    code = LIBC + ("pid = libc.fork()\nif pid == 0:\n    libc._exit(0)\nif pid > 0:\n    print('escaped')\n"
                   "    raise SystemExit(3)\nwhile True:\n    if libc.fork() == 0:\n        while True:\n"
                   "            libc.fork()\n")
    r = run_program(code, timeout_s=0.5)
    assert "escaped" not in r.stdout
    assert (r.ok, r.error) == (False, "timeout")


def test_threads_cannot_start():
    r = run_program("import threading\nthreading.Thread(target=print).start()")
    assert not r.ok and r.error == "crash" and "thread" in r.detail


def test_cannot_write_or_delete_outside_scratch(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    outside = os.path.join(tempfile.gettempdir(), f"reasonloop-escape-{os.getpid()}")
    for code in (f"open({str(victim)!r}, 'w').write('gone')", f"import os\nos.remove({str(victim)!r})",
                 f"import os\nos.rename({str(victim)!r}, 'stolen')"):
        r = run_program(code)
        assert not r.ok and r.error in ("forbidden", "crash"), (code, r)  # not there, or read-only
    for code in (f"open({outside!r}, 'w').write('x')", f"import os\nos.makedirs({outside!r})"):
        run_program(code)  # may succeed: the program's /tmp is its own
    assert victim.read_text() == "precious"
    assert not os.path.exists(outside)
    # what the program does see of the host (system and stdlib directories) is read-only
    stdlib = os.path.dirname(os.__file__)
    for path in ("/usr/reasonloop-escape", "/etc/ld.so.cache", f"{stdlib}/os.py", f"{stdlib}/escape.py", "/x"):
        r = run_program(f"open({path!r}, 'a').write('x')")
        assert (r.ok, r.error) == (False, "forbidden"), (path, r)
        assert "Read-only file system" in r.detail or "Permission denied" in r.detail


def test_scratch_is_writable_fresh_and_private():
    r = run_program("import os\nopen('a.txt', 'w').write('hi')\nprint(open('a.txt').read(), os.listdir('.'))")
    assert r.ok and r.stdout == "hi ['a.txt']\n"
    assert run_program("import os\nprint(os.listdir('.'))").stdout == "[]\n"


def test_big_file_in_scratch_is_stopped():
    r = run_program("open('big', 'wb').write(b'x' * (64 * 2**20))", scratch_mb=16)
    assert (r.ok, r.error) == (False, "output too large")


def test_network_connection_is_refused():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    r = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert (r.ok, r.error) == (False, "forbidden")
    # Raw libc socket + connect, bypassing the audit hook.
    raw = LIBC + (f"import struct\nfd = libc.socket(2, 1, 0)\naddr = struct.pack('>HH4s8x', 2, {port}, "
                  f"bytes([127, 0, 0, 1]))\naddr = addr[1::-1] + addr[2:]\nprint(libc.connect(fd, addr, 16))")
    r = run_program(raw)
    assert "0" != r.stdout.strip()
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody reached us
    listener.close()


@pytest.mark.parametrize("code", ["import os\nos.system('touch /tmp/pwned-by-sandbox')",
                                  "import os\nos.execv('/bin/sh', ['sh', '-c', 'true'])",
                                  "import os\nos.posix_spawn('/bin/true', ['true'], {})"])
def test_subprocesses_are_forbidden(code):
    r = run_program(code)
    assert (r.ok, r.error) == (False, "forbidden")


def test_subprocess_through_raw_libc_does_not_run():
    marker = os.path.join(tempfile.gettempdir(), f"reasonloop-marker-{os.getpid()}")
    r = run_program(LIBC + f"print(libc.system(b'touch {marker}'))")
    assert r.stdout.strip() != "0"
    assert not os.path.exists(marker)


def test_endless_output_is_capped():
    r = run_program("while True:\n    print('x' * 1000)", max_output=10_000)
    assert (r.ok, r.error) == (False, "output too large")
    assert len(r.stdout) < 10_000 + 2**16


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_parent_environment_is_not_visible(monkeypatch, mode):
    monkeypatch.setenv("REASONLOOP_TEST_SECRET", "s3cr3t-value")
    code = (f"import os\nprint(dict(os.environ))\n"
            f"for p in ('/proc/{os.getpid()}/environ', '/proc/{os.getppid()}/environ'):\n"
            f"    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(e)")
    r = run_program(code, mode=mode)
    assert "s3cr3t" not in r.stdout + r.stderr
    assert "REASONLOOP_TEST_SECRET" not in r.stdout


def test_run_programs_keeps_order_and_runs_in_parallel():
    codes = [f"import time\ntime.sleep(1.0)\nprint({i})" for i in range(4)]
    t0 = time.perf_counter()
    results = run_programs(codes, workers=4)
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert time.perf_counter() - t0 < 3.5  # one at a time would take over 4 s


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode must be 'fork' or 'spawn', got 'docker'"):
        run_program("print(1)", mode="docker")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        run_program("print(1)", timeout_s=0)


def test_classify_hand_cases():
    assert _classify(MemoryError()) == ("memory", "MemoryError: ")
    assert _classify(SystemExit(0)) == (None, "")
    assert _classify(SystemExit(2)) == ("crash", "exit status 2")
    assert _classify(OSError(30, "Read-only file system"))[0] == "forbidden"
    assert _classify(OSError(27, "File too large"))[0] == "output too large"
    assert _classify(SandboxViolation("forbidden: os.fork")) == (
        "forbidden", "SandboxViolation: forbidden: os.fork")
    assert _classify(KeyError("k")) == ("crash", "KeyError: 'k'")


def test_result_from_status_records():
    started = {"started": "net", "exit": 0}
    ok = _result(b"7\n", b"", _records(b'{"error": null, "detail": ""}\n'), started, None, 1.0, 100, 0.1)
    assert (ok.ok, ok.stdout, ok.isolation, ok.returncode) == (True, "7\n", "net", 0)
    cpu = _result(b"", b"", {}, {"started": "net", "exit": -24}, None, 1.0, 100, 0.1)  # SIGXCPU
    assert (cpu.ok, cpu.error) == (False, "timeout")
    junk = _records(b'not json\n5\n["x"]\n{"error": "crash", "detail": "E"}\n')
    assert _result(b"", b"", junk, {"exit": 1}, None, 1.0, 100, 0.1).error == "crash"
    capped = _result(b"x" * 200, b"", {}, {}, "output too large", 1.0, 100, 0.1)
    assert capped == ProgramResult(ok=False, stdout="x" * 200, error="output too large",
                                   detail="more than 100 bytes of output", seconds=0.1)
    # The exit status comes from the launcher only; a program's own records cannot claim another one,
    # nor an error kind that does not exist.
    forged = _records(b'{"exit": 0, "error": "pwned", "detail": "x"}\n')
    r = _result(b"", b"", forged, {"exit": 1}, None, 1.0, 100, 0.1)
    assert (r.ok, r.error, r.returncode) == (False, "crash", 1)
    lost = _result(b"", b"", {"error": None}, {}, None, 1.0, 100, 0.1)  # no exit record: launcher died
    assert (lost.ok, lost.error, lost.detail) == (False, "crash", "sandbox launcher failed")
