"""One `elastic train` per run directory: an exclusive lock on `<run.dir>/.lock`, held by rank 0.

The lock is `fcntl.flock` on an open file, so the kernel drops it when the process ends, however it
ends (kill -9, node reboot): a crashed run never leaves it stuck. The file holds the owner's host
and pid, for the message the second run prints. Not a run file: `--overwrite` keeps it.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from elastic_cli.errors import UsageError

NAME = ".lock"


class RunLock:
    """`RunLock(run_dir).acquire()` or UsageError (exit 2) when another process holds it; `release()`."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UsageError(f"run directory {self.path.parent} is in use by {owner} (another elastic train); "
                             f"wait for it to finish or choose another run.dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_free(run_dir: str | Path) -> None:
    """UsageError when a running `elastic train` holds the run directory (nothing is created)."""
    lock = RunLock(run_dir)
    if lock.path.is_file():
        lock.acquire().release()
