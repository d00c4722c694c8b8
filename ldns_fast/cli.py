"""What the command-line tools share: one-line errors with exit status 2.

Every refusal of a CLI (a bad argument, data file, checkpoint, device or output path) prints one line
``error: ...`` to stderr and exits with status 2, without a traceback and before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

EXIT_USAGE = 2


class CliError(SystemExit):
    """Exit status 2 for a refused command; ``str()`` is the message printed as ``error: ...``."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> NoReturn:
    """Print ``error: message`` (one line) to stderr and exit with status 2."""
    message = " ".join(str(message).split())  # one line, whatever the exception text held
    print(f"error: {message}", file=sys.stderr)
    raise CliError(message)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn a ValueError (DataFormatError, CheckpointError, ...) or OSError inside the block into :func:`fail`."""
    try:
        yield
    except (ValueError, OSError) as err:
        fail(str(err))


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line ``error: ...`` with exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")
