import fcntl
import os
import threading
import time

import pytest

from reasonloop.errors import UserError
from reasonloop.runs.lock import LOCK_FILE, RunLock


def test_a_holder_that_has_not_written_its_name_yet_is_still_named(tmp_path):
    # The race a CI run hit: the first run holds the flock but has not yet written "pid ... on ...".
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write_name_late():
        time.sleep(0.2)
        os.pwrite(fd, b"pid 4242 on host since now\n", 0)

    writer = threading.Thread(target=write_name_late)
    writer.start()
    try:
        with pytest.raises(UserError, match="in use by pid 4242 on host since now; wait"):
            RunLock(tmp_path).acquire()
    finally:
        writer.join()
        os.close(fd)
    RunLock(tmp_path).acquire().release()  # the OS dropped the lock with the descriptor


def test_a_holder_that_never_writes_its_name_is_called_another_process(tmp_path, monkeypatch):
    monkeypatch.setattr("reasonloop.runs.lock.HOLDER_WAIT_S", 0.1)  # the wait itself is not under test
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(UserError, match="in use by another process"):
            RunLock(tmp_path).acquire()
    finally:
        os.close(fd)
