"""Worker functions for the multiprocessing test: spawn children import them by name."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from anonshm import _winsection as windows

assert sys.platform == "win32" or not TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.reduction import DupHandle


def write_through(handle: DupHandle, offset: int, data: bytes) -> bytes:
    """Take the handle, map it, read what is at ``offset`` and write ``data`` over it."""
    mine = handle.detach()
    try:
        assert windows.inspect(mine)[1], "the handle was sent read-write"
        view = windows.map(mine, offset, len(data), 1)
        seen = bytes(view)
        view[:] = data
        view.release()
        return seen
    finally:
        windows.close(mine)


def touch(mem: object, data: bytes) -> tuple[str, int, str, bytes]:
    """A worker given a memory: what arrived (name, size, protection, head), then a write."""
    from anonshm import AnonymousMemory

    assert isinstance(mem, AnonymousMemory), type(mem)
    with mem, mem.map(length=len(data)) as view:
        head = bytes(view.buf)
        if mem.protection == 1:
            view[:] = data
        return mem.name, mem.size, mem.protection.name, head
