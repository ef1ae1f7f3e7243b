"""Something happening at every line of anonshm: an exception (Ctrl-C), or a handler.

A signal handler runs, and ``KeyboardInterrupt`` is raised, between two lines of
whatever Python code is running.  These helpers make that happen deterministically:
a trace function counts the ``line`` events in frames of anonshm's own modules and,
at the N-th, calls ``action`` (which may raise).  A test runs the same operation for
N = 1, 2, ... until it completes without reaching N, and checks its invariants after
each trial: so every line of the operation has been interrupted once.
"""

from __future__ import annotations

import gc
import linecache
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from _typeshed import TraceFunction

PACKAGE = str(Path(__file__).resolve().parent.parent / "anonshm")
MAX_LINES = 2000  # no operation of anonshm runs this many lines


where: list[str] = []  # the line the last action ran at, for the tests' messages


def _nop(frame: FrameType) -> bool:
    """Whether the line is a ``try:`` or a ``pass``, which compile to a NOP.

    CPython never checks for a pending signal at a NOP, so Ctrl-C cannot arrive
    there; and an exception that a trace function raises at it escapes every handler
    of the frame, even an enclosing ``finally`` (CPython 3.11-3.13): an artefact of
    tracing, not a line where anything can really happen.
    """
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return line.strip() in ("try:", "pass")


# Finalizers: what the garbage collector runs (weak references' callbacks, __del__).
_CALLBACKS = frozenset(
    {"_collected", "_fire", "_warn_unclosed", "_Borrow.__del__", "Pending.__del__"}
)


def _collecting(frame: FrameType) -> bool:
    """Whether the garbage collector runs this frame: a finalizer, or what one calls.

    An exception there is unraisable: Python prints and drops it, as it would drop a
    Ctrl-C landing there; what a finalizer does is checked by the tests of the net.
    """
    caller: FrameType | None = frame
    while caller is not None:
        if caller.f_code.co_qualname in _CALLBACKS:
            return True
        caller = caller.f_back
    return False


class Interrupted(BaseException):
    """What the injected 'Ctrl-C' raises: a BaseException, as KeyboardInterrupt is."""


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def run_interrupted_at(
    line: int,
    call: Callable[[], object],
    action: Callable[[], None],
    dispose: Callable[[object], None] = _close,
) -> tuple[bool, type[BaseException] | None]:
    """Run ``call()``, calling ``action`` at its ``line``-th line inside anonshm.

    Returns whether the action ran (False: the call completed in fewer lines) and the
    type of what the trial raised (None if it returned).  What the call returned is
    given to ``dispose`` (by default its ``close()`` is called); it and the exception
    are dropped before this returns, so that a test can count descriptors right after
    (with :func:`settled`, which collects the garbage if need be).  The safety net may
    close what an interrupted call dropped (with a ``ResourceWarning``, ignored here):
    that is not a leak, since the descriptor is closed by then.
    """
    seen = 0
    fired = False

    def local(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        nonlocal seen, fired
        if event == "line" and not fired and not _nop(frame):
            seen += 1
            if seen == line:
                fired = True
                where[:] = [f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"]
                action()
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        if frame.f_code.co_filename.startswith(PACKAGE) and not fired and not _collecting(frame):
            return local
        return None

    outcome: type[BaseException] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            result = call()
        except BaseException as exc:
            outcome = type(exc)
        finally:
            sys.settrace(previous)
        if outcome is None:
            dispose(result)
            del result
    return fired, outcome


def settled(table: Callable[[], object], expected: object) -> bool:
    """Whether ``table()`` is ``expected`` now, or once the garbage is collected.

    Reference counting frees what a trial dropped at once; a full collection (slow,
    with a test runner's many objects) runs only when something is still there.
    """
    if table() == expected:
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return table() == expected


def raise_interrupted() -> None:
    """An action: what Ctrl-C does at that line."""
    raise Interrupted


def each_line(
    setup: Callable[[], Callable[[], object]],
    action: Callable[[], None],
    check: Callable[[type[BaseException] | None], None],
    dispose: Callable[[object], None] = _close,
) -> int:
    """Interrupt a call with ``action`` at each of its lines in turn; ``check`` after each.

    ``setup()`` (not traced) prepares a trial and returns the call to interrupt.
    ``check`` gets the type of what the trial raised (None if it returned).  Returns
    the number of lines interrupted, so a test can assert the operation was traced.
    """
    for line in range(1, MAX_LINES):
        fired, outcome = run_interrupted_at(line, setup(), action, dispose)
        check(outcome)
        if not fired:
            return line - 1
    raise AssertionError(f"the operation ran more than {MAX_LINES} lines")
