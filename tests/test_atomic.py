"""Atomic writes (:mod:`ldns_fast.atomic`): temporaries of killed writers are cleaned up, output paths
are checked before any work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ldns_fast.atomic import atomic_path, atomic_write, check_output_dir, check_output_file

# Starts an atomic write of TARGET, writes a megabyte into the temporary file, reports it and waits.
WRITER = """
import sys, time
from ldns_fast.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "wb").write(b"x" * 2**20)
    print(tmp, flush=True)
    time.sleep(120)
"""


def killed_writer(target: Path) -> Path:
    """The temporary file of an atomic write of ``target`` whose process was killed with SIGKILL."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(process.stdout.readline().strip())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert tmp.is_file() and tmp.parent == target.parent
    return tmp


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_next_write_removes_temporaries_of_killed_writers(tmp_path: Path) -> None:
    target = tmp_path / "samples.h5"
    first = killed_writer(target)
    second = killed_writer(target)  # its write already removed the first one's temporary
    other = killed_writer(tmp_path / "samples.h5.bak")  # another target: not touched by writes of samples.h5
    assert hidden_files(tmp_path) == sorted([second.name, other.name]) and first != second
    atomic_write(target, lambda tmp: Path(tmp).write_text("complete"))
    assert target.read_text() == "complete"
    assert hidden_files(tmp_path) == [other.name]


def test_temporaries_of_running_writers_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    with atomic_path(target) as outer:  # this process is alive: its temporary is not stale
        Path(outer).write_text("outer")
        atomic_write(target, lambda tmp: Path(tmp).write_text("inner"))
        assert Path(outer).read_text() == "outer"
    assert target.read_text() == "outer" and not hidden_files(tmp_path)


def test_output_checks_refuse_folders_files_and_unwritable_parents(tmp_path: Path, monkeypatch) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert check_output_file(tmp_path / "new" / "deeper" / "s.h5") == tmp_path / "new" / "deeper" / "s.h5"
    assert check_output_dir(tmp_path / "new" / "eval") == tmp_path / "new" / "eval"
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(ValueError, match=f"{a_file} is a file, not a folder"):
        check_output_file(a_file / "s.h5")
    with pytest.raises(ValueError, match="output folder .* is a file"):
        check_output_dir(a_file)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    with pytest.raises(ValueError, match=f"the folder {tmp_path} is not writable"):
        check_output_dir(tmp_path / "new" / "eval")
    assert not (tmp_path / "new").exists()  # the checks create nothing
