"""Helpers of the Windows tests: children that can import the repository, a fresh memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

import tests.windows._backend as backend
from anonshm import _winsection as windows

assert sys.platform == "win32" or not TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

SIZE = 100_000


@pytest.fixture
def section() -> Iterator[int]:
    """A fresh read-write memory of SIZE bytes; its handle is closed after the test."""
    handle = windows.create(SIZE)
    yield handle
    windows.close(handle)


def child(code: str, *args: str) -> list[str]:
    """argv running ``code`` (dedented) in a fresh interpreter that imports the repository."""
    prelude = f"import sys\nsys.path.insert(0, {str(backend.ROOT)!r})\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(code), *args]


def run(
    argv: list[str], startupinfo: subprocess.STARTUPINFO | None = None, *, close_fds: bool = True
) -> str:
    """Run a child to its end and return its output; a failure fails with its stderr."""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        startupinfo=startupinfo,
        close_fds=close_fds,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
