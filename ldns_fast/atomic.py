"""Atomic file writes: a temporary file in the target folder, fsynced, then renamed into place.

Temporary files are named ``.{target}.{host}-{pid}.{random}.tmp``; one left behind by a killed
process (``kill -9`` skips every clean-up) is removed by the next write of the same target on the same
machine, once its process is gone. :func:`check_output_file` and :func:`check_output_dir` refuse an
output path that cannot be written before any work starts.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on a clean exit fsync it and rename it to ``path``.

    ``path`` is either left untouched or replaced by the complete file; the temporary file is removed
    on any failure (including KeyboardInterrupt), and stale ones of ``path`` left by killed processes
    are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` inside :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of ``path`` whose writing process (on this machine) no longer runs.

    Temporaries of other targets, of other machines (shared folders) and of running processes are kept.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_HOST}-(\d+)\.[^.]+\.tmp")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.{_HOST}-*.tmp"):
        match = pattern.fullmatch(candidate.name)
        if match and not _running(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def check_output_file(path: str | os.PathLike) -> Path:
    """Raise a ValueError unless a file can be written at ``path`` (checked before the work, writes nothing).

    Refused: an existing folder, a read-only existing file, a parent that is a file or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"output {path} is read-only")
    _check_creatable(path.parent, f"output {path}")
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """Raise a ValueError unless ``path`` is, or can be created as, a writable folder (writes nothing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {path} is a file")
    _check_creatable(path, f"output folder {path}")
    return path


def _check_creatable(folder: Path, what: str) -> None:
    """Raise a ValueError unless ``folder`` exists writable or its nearest existing ancestor is a writable folder."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write {what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what}: the folder {existing} is not writable")


def _running(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# This machine, as 8 hex digits: temporaries name their writer's host, so a shared folder's cleaner
# never judges another machine's process ids.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _json_safe(value: object) -> object:
    """Nested dicts and lists with NaN and inf floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(result: dict[str, object], path: str | os.PathLike) -> Path:
    """Write ``result`` as indented strict JSON (NaN as null), atomically."""
    text = json.dumps(_json_safe(result), indent=2, allow_nan=False)

    def write(temporary: str) -> None:
        Path(temporary).write_text(text + "\n")

    return atomic_write(path, write)
