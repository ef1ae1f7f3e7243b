"""Fault injection: an exception (Ctrl-C) raised at each line of a module's code in turn.

``inject_at_each_line(call, files, cleanup)`` runs ``call`` once per line event that
happens inside frames of ``files`` (anonshm's own modules, never the standard
library's), each time raising the exception at the next such line, until ``call`` runs
to the end with nothing raised.  After each trial, with the tracer removed,
``cleanup(trial)`` undoes what the call left (a child to reap) and asserts that
nothing leaked.  This is how an asynchronous exception (``KeyboardInterrupt`` from a
signal handler) lands in real life: before any line, not only where the code expects
one.

A raise from a trace function propagates into the traced frame as if that line had
raised, and CPython turns tracing off at once: each trial gets exactly one fault.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from types import FrameType

    from _typeshed import TraceFunction

__all__ = ["Fault", "Trial", "inject_at_each_line"]

T = TypeVar("T")

_MAX_TRIALS = 10_000  # a loop in the traced code would otherwise never end


class Fault(KeyboardInterrupt):
    """The injected exception: a ``KeyboardInterrupt``, told apart from a real one."""


@dataclass(frozen=True)
class Trial(Generic[T]):
    """One run of the call, and what became of it."""

    number: int
    """The fault was due at the ``number``-th line event (from 1) in the traced files."""
    where: str | None
    """``file:line`` where the fault was raised; None: the call ran to its end untouched."""
    result: T | None
    """What the call returned (None when it raised)."""
    error: BaseException | None
    """What the call raised (None when it returned)."""

    @property
    def injected(self) -> bool:
        """Whether a fault was raised in this trial."""
        return self.where is not None

    def describe(self) -> str:
        """For assertion messages: which trial, and where its fault landed."""
        return f"trial {self.number}: fault at {self.where or 'nowhere'}, raised {self.error!r}"


class _Tracer:
    def __init__(self, files: frozenset[str], due: int) -> None:
        self.files = files
        self.due = due
        self.seen = 0
        self.where: str | None = None
        self._traced: dict[str, bool] = {}

    def _is_target(self, filename: str) -> bool:
        known = self._traced.get(filename)
        if known is None:
            known = self._traced[filename] = os.path.realpath(filename) in self.files
        return known

    def on_call(self, frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        # Only frames of the target files get a local tracer: only their lines count.
        return self.on_line if self._is_target(frame.f_code.co_filename) else None

    def on_line(self, frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        if event == "line":
            self.seen += 1
            if self.seen == self.due:
                self.where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                raise Fault(self.where)
        return self.on_line


def inject_at_each_line(
    call: Callable[[], T],
    files: Collection[str],
    cleanup: Callable[[Trial[T]], None],
) -> int:
    """Run ``call`` with a fault at its 1st, 2nd, ... line in ``files``, until none lands.

    Args:
        call: what to run; it is called once per trial.
        files: the source files whose lines may fault (paths; symlinks resolved).
        cleanup: called after every trial, the tracer removed, with what happened;
            it reaps or closes what the call returned and asserts that nothing leaked.

    Returns:
        The number of trials that injected a fault (the lines the call runs through).

    Raises:
        AssertionError: the call swallowed a fault (it returned although one was
            raised), or replaced it with another exception.
        RuntimeError: the call still met a line after ``_MAX_TRIALS`` trials.
    """
    targets = frozenset(os.path.realpath(path) for path in files)
    previous = sys.gettrace()
    for due in range(1, _MAX_TRIALS + 1):
        tracer = _Tracer(targets, due)
        result: T | None = None
        error: BaseException | None = None
        sys.settrace(tracer.on_call)
        try:
            result = call()
        except BaseException as exc:  # the fault, or what the code made of it
            error = exc
        finally:
            sys.settrace(previous)
        trial = Trial(due, tracer.where, result, error)
        cleanup(trial)
        if not trial.injected:
            if error is not None:
                raise error
            return due - 1
        assert isinstance(error, Fault), f"the fault was lost: {trial.describe()}"
        del trial, error, result  # its traceback holds the frames it ran through
    raise RuntimeError(f"{call!r} still ran a traced line after {_MAX_TRIALS} trials")
