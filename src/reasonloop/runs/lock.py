"""One process at a time per run folder: an exclusive lock on `<run>/run.lock`.

Two runs writing one folder would double every metric and sample row and race on the checkpoints.
The lock is `flock` on an open file, so the operating system releases it when the holder exits or is
killed; a stale lock file left by a killed run blocks nothing. The file's text (pid, host, start
time) only tells a second run who holds the lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from reasonloop.errors import UserError

LOCK_FILE = "run.lock"
HOLDER_WAIT_S = 1.0  # how long a holder that has just taken the lock gets to write its name


def _read_holder(fd: int) -> str:
    """The holder's text; a holder that has just taken the lock may not have written it yet, so wait a
    moment for it rather than naming nobody."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        if text or time.monotonic() > deadline:
            return text or "another process"
        time.sleep(0.02)


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise UserError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{self.path.parent}: run folder in use by {holder}; wait for that run to "
                            "finish (or stop it), or use another --out") from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
