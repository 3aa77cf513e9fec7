"""One writer per run folder.

Two ``rlad train`` processes on one run folder (a run and, by mistake, ``rlad train resume=`` of the same folder)
each log, store and checkpoint the same steps: ``metrics.jsonl`` then holds steps twice, the replay store holds
every group twice, and one of them dies renaming a checkpoint the other just wrote. So a run holds an OS lock
on ``<run_dir>/.lock`` (``fcntl.flock``) for as long as it runs, and a second process is refused before it
touches anything, with the holder named. The OS drops the lock when the holder exits however it exits —
SIGKILL included — so a crashed run leaves no stale lock: its folder can be resumed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "RunFolderBusyError", "hold_run_dir"]

LOCK_NAME = ".lock"


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder; the message names it."""


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process (creating the folder), or raise :class:`RunFolderBusyError`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderBusyError(
                f"{run_dir} is in use by {holder}: one process writes a run folder at a time. Wait for it to "
                f"finish or stop it, then `rlad train resume={run_dir}`; or choose another train.run_dir"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"rlad process {os.getpid()} on {socket.gethostname()} (since {started})".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
