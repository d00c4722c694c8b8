"""Exclusive output locks: a second writer fails at once; a killed holder's lock file never blocks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ldns_fast.lock import OutputBusyError, exclusive_lock, lock_path


def test_a_held_lock_refuses_a_second_writer_naming_the_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with exclusive_lock(run, folder=True):
        assert lock_path(run, True).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputBusyError, match=rf"{run} is being written by another process \(pid {os.getpid()}\)"):
            with exclusive_lock(run, folder=True):  # flock conflicts between two opens, even in one process
                pass
        with exclusive_lock(run / "samples.h5"):  # another target: its own lock
            assert lock_path(run / "samples.h5", False).name == ".samples.h5.lock"
    assert run.is_dir() and not list(run.iterdir())  # released locks leave no file
    with exclusive_lock(run, folder=True):  # and can be taken again
        pass


def test_a_folder_created_for_a_lock_is_removed_when_left_empty(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path / "refused", folder=True):
        assert (tmp_path / "refused").is_dir()
    with exclusive_lock(tmp_path / "used", folder=True):
        (tmp_path / "used" / "model.pt").write_bytes(b"weights")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model.pt", "used"]


def test_the_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom ldns_fast.lock import exclusive_lock\n"
        f"with exclusive_lock({str(target)!r}):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    )], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            with exclusive_lock(target):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(target, False).exists()  # kill -9 skipped the clean-up ...
    with exclusive_lock(target):  # ... but the kernel released the flock
        pass
    assert not lock_path(target, False).exists()
