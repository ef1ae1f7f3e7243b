"""Real interrupts: a signal handler that raises (as Ctrl-C does) wherever it lands.

CPython runs a signal handler between two bytecodes, not only between lines: these
storms let a timer land anywhere inside anonshm, many thousand times, and count what
is left open afterwards.  The handler raises once per operation (a second interrupt
during the cleanup of the first is not what Ctrl-C does).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import warnings
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection, _holder
from tests.conftest import FEATURES, assert_freeze_refused

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class Interrupt(BaseException):
    """What the timer's handler raises, as Ctrl-C raises KeyboardInterrupt."""


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def storm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], None], int], int]]:
    armed = [False]
    # An interrupt that lands in a finalizer (a weak reference's callback, a __del__) is
    # printed and dropped by Python, as it would be for Ctrl-C; what matters here is
    # what stays open.
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)

    def handler(signum: int, frame: object) -> None:
        if armed[0]:
            armed[0] = False  # once per operation
            raise Interrupt

    def run(operation: Callable[[], None], tries: int) -> int:
        interrupted = 0
        for _ in range(tries):
            try:
                armed[0] = True
                operation()
            except Interrupt:
                interrupted += 1
            finally:
                armed[0] = False
        return interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # the net closes what was dropped
            yield run
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _lifecycle() -> None:
    mem = AnonymousMemory(4096)
    try:
        with mem.map() as view:
            view[0] = 1
        mem.duplicate(protection=Protection.READ_ONLY).close()
        if FEATURES.freeze:
            mem.freeze()
        mem.export()
    finally:
        mem.close()


def test_an_interrupt_anywhere_leaves_no_descriptor_open(
    storm: Callable[[Callable[[], None], int], int],
) -> None:
    gc.collect()
    before = fd_count()
    interrupted = storm(_lifecycle, 3000)
    gc.collect()
    assert interrupted > 100  # the timer did land inside anonshm, often
    assert fd_count() == before


def test_a_drain_under_way_never_closes_a_descriptor_borrowed_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A freeze() that leaves its borrow closes the old descriptor; os.close may let
    # another thread run meanwhile (the GIL), which borrows the new one, while a third
    # closes the memory.  The borrowed descriptor must stay open until its borrow ends.
    if not FEATURES.freeze:  # no freeze, no state replaced: the refusal instead
        with AnonymousMemory(4096) as mem:
            assert_freeze_refused(mem)
        return
    real_close = _holder._close
    paused, resume = threading.Event(), threading.Event()

    def slow_close(fd: int) -> None:
        real_close(fd)
        if threading.current_thread().name == "freezer" and not paused.is_set():
            paused.set()
            resume.wait(10)

    monkeypatch.setattr(_holder, "_close", slow_close)
    mem = AnonymousMemory(4096)
    freezer = threading.Thread(target=mem.freeze, name="freezer")
    freezer.start()
    assert paused.wait(10)
    assert mem._holder is not None
    borrow = mem._holder.borrow()
    fd, _, _ = borrow.__enter__()
    mem.close()
    resume.set()
    freezer.join()
    os.fstat(fd)  # still this memory's: open
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:anonshm")
    borrow.__exit__(None, None, None)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the last borrower
