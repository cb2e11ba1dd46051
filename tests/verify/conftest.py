"""Sandbox fixture: after a test, nothing it ran through the sandbox is alive, leaked or changed."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from reasonloop.verify import sandbox


def sandbox_processes() -> list[str]:
    """Live processes this test process started through the sandbox: programs (uids derived from our pid)
    and launchers (children of ours or of our fork server). Zombies are dead and not listed. Checked
    with no grace period: when ``run_program`` returns, all of them must be gone."""
    me = os.getpid()
    first_uid = sandbox.UID_BASE + (me % 100_000) * 256
    server = sandbox._server.proc.pid if sandbox._server is not None and sandbox._server.owner == me else None
    alive = []
    for path in glob.glob("/proc/[0-9]*/status"):
        try:
            with open(path) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(path.replace("status", "cmdline"), "rb") as f:
                cmd = f.read()
        except OSError:
            continue  # exited while we looked
        pid, uid, ppid = int(path.split("/")[2]), int(fields["Uid"].split()[0]), int(fields["PPid"])
        if fields["State"].strip().startswith(("Z", "X")) or pid == server:
            continue
        if first_uid <= uid < first_uid + 256 or (ppid in (me, server) and b"sandbox_child.py" in cmd):
            alive.append(f"{pid} uid={uid} ppid={ppid} {cmd[:80]!r}")
    return alive


@pytest.fixture
def live_sandbox_processes():
    """``sandbox_processes``, for a test to check right after a call returns."""
    return sandbox_processes


@pytest.fixture
def sandbox_leaves_nothing(tmp_path_factory):
    """After each test: no sandbox process alive, nothing left in the temporary folder (a private one, so
    that other users of this machine's /tmp do not count), our environment untouched, and the caller can
    still run programs."""
    private_tmp, host_tmp = tmp_path_factory.mktemp("tempdir"), tempfile.tempdir
    tempfile.tempdir = str(private_tmp)  # by hand: the test's own monkeypatch must be undone before our checks
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    try:
        yield
    finally:
        tempfile.tempdir = host_tmp
    assert sandbox_processes() == []
    assert list(private_tmp.iterdir()) == []  # e.g. no scratch folder
    assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == env
    assert sandbox.run_program("print(6 * 7)").stdout == "42\n"
