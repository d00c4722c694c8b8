"""Exclusive locks on outputs, so two processes never write one run folder or one output file.

:func:`exclusive_lock` takes ``fcntl.flock`` on a lock file (``.lock`` inside a folder, ``.NAME.lock``
beside a file) and fails at once with :class:`OutputBusyError` while another process holds it. The
kernel drops a flock when its process dies, so a lock file left behind by ``kill -9`` never blocks the
next run; a released lock's file is removed.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputBusyError(OSError):
    """Another process is writing the same output (it holds its lock)."""


def lock_path(target: Path, folder: bool) -> Path:
    """The lock file of ``target``: ``target/.lock`` for a folder, ``.NAME.lock`` beside a file."""
    return target / ".lock" if folder else target.parent / f".{target.name}.lock"


@contextmanager
def exclusive_lock(target: str | os.PathLike, *, folder: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` (a folder, created if needed, or a file) inside the block.

    A folder created here is removed again on release if it is still empty (the work was refused).

    Raises:
        OutputBusyError: another process holds the lock (its process id is in the message).
    """
    target = Path(target)
    created = folder and not target.exists()
    (target if folder else target.parent).mkdir(parents=True, exist_ok=True)
    path = lock_path(target, folder)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"{target} is being written by another process (pid {holder}); wait for it to finish "
                f"or choose another output"
            ) from None
        # The previous holder removes the file on release: retry when we locked a file no longer in place.
        try:
            opened, current = os.fstat(fd), os.stat(path)
            if (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter that opened it retries (see above)
        os.close(fd)
        if created and not any(target.iterdir()):
            target.rmdir()
