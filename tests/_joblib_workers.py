"""Worker functions for the joblib and loky tests, beside those of ``_mp_workers``.

loky's workers are fresh interpreters that import what they run by module name (cloudpickle
sends importable functions by reference), through the parent's ``sys.path`` that loky hands
them: a small module of its own, so they do not import a test module and its fixtures.
"""

from __future__ import annotations

import os

from anonshm import AnonymousMemory
from tests._mp_workers import Seen, touch

_kept: list[AnonymousMemory] = []


def keep(mem: AnonymousMemory) -> None:
    """Executor initializer: keep the memory the worker was started with."""
    _kept.append(mem)


def touch_kept(data: bytes) -> Seen:
    """:func:`touch` the memory the initializer kept (and close it)."""
    return touch(_kept.pop(), data)


def write_slot(mem: AnonymousMemory, slot: int) -> tuple[int, int]:
    """Write ``slot + 1`` at ``slot``, leave the memory open; say which object it was."""
    with mem.map(slot, 1) as view:
        view[0] = slot + 1
    return os.getpid(), id(mem)
