"""Holder: who owns a memory's descriptor, in every thread, in signal handlers, after fork.

A handle's descriptor number must never be used after it was closed: by then the
number may belong to some other file (the next ``open`` reuses it), and a map, a seal
or a send would act on that file instead.  A lock around every use does not do:
a ``close()`` from a signal handler (or a ``__del__``) that interrupts this thread's
own ``map()`` re-enters it, and a child forked while another thread held it waits for
ever.  So the holder needs no lock at all:

- The descriptor and its protection (and the twin some backends keep) form a *state*.
  ``freeze()`` replaces the state whole, so whoever reads one reads a descriptor and
  the protection that goes with it.
- Every use of the descriptor *borrows* the state (``with holder.borrow() as (fd,
  protection, twin):``).  ``close()`` *retires* every state; a retired state's
  descriptors are closed by whoever finds it retired with no borrower left: the
  closer, or the last borrower.  A borrower registers, then looks whether the state is
  retired; a closer marks it retired, then looks for borrowers: with sequentially
  consistent memory (CPython's), one of them always sees the other, so a descriptor in
  use is never closed, and a number in use is never reused.
- Every step that changes ownership is one operation done in C: a list's ``append``,
  ``pop`` or ``remove``, or a descriptor made and stored by ``_backend.take``
  (``pending.extend(map(os.dup, ...))``) and closed and forgotten by :func:`close_all`,
  in which no bytecode runs between the two halves.  CPython raises
  ``KeyboardInterrupt`` (and runs signal handlers) only between bytecodes, so an
  interrupt lands before such a step or after it, never inside.
- A state stays in the holder until its descriptors are closed, so a ``close()`` that
  an exception cut short, run again, finishes the job, as does the safety net.
- After ``fork`` the child has only the forking thread: the borrows of the others can
  never end there, so they are forgotten (``os.register_at_fork``).

The safety net is here too: a holder collected unclosed (its handle was dropped)
closes its descriptors and issues a ``ResourceWarning`` (``_net``).
"""

import os
from _warnings import warn  # what warnings.warn is, without importing warnings.py

from ._backend import backend
from ._net import forget, watch, watched

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Final

__all__ = ["Holder", "Pending", "State", "close_all", "close_first"]

# What a borrower reads: (descriptor, protection, twin or -1).
State = tuple[int, int, int]

_CLOSED: "Final" = "I/O operation on a closed AnonymousMemory"
_close = backend.close


class Pending(list[int]):
    """A call's descriptors that nobody else owns yet; closed by the call's ``finally``.

    And if an interrupt skips that ``finally`` (it can land on its first bytecode), by
    the list itself when the call's frame lets go of it: nothing made is ever lost.
    """

    __slots__ = ()

    def __del__(self) -> None:
        close_all(self)


def close_all(pending: list[int]) -> None:
    """Close every descriptor in ``pending`` (which ends empty; -1 entries are skipped).

    Each is taken out and closed inside one C call, so an interrupt leaves each either
    in the list, open, or out of it, closed; calling this again closes the rest.
    """
    if not pending:  # the common case, a call's finally after its success: no exception
        return
    try:
        any(map(_close, map(pending.pop, [-1] * len(pending))))
    except IndexError:
        pass  # another thread took some of them meanwhile, to close them itself


def close_first(pending: list[int]) -> None:
    """Close ``pending[0]`` and take it out, within one C call (see :func:`close_all`)."""
    any(map(_close, map(pending.pop, (0,))))


class _Owned:
    """One state: descriptors (closed by whoever claims them first), protection, borrowers."""

    __slots__ = ("fds", "protection", "retired", "users")

    def __init__(self, protection: int) -> None:
        self.fds: list[int] = []  # the descriptor, then its twin if any
        self.protection = protection
        self.retired = False
        self.users: list[int] = []  # the id() of each borrow under way

    def read(self) -> State:
        fds = self.fds
        return fds[0], self.protection, fds[1] if len(fds) > 1 else -1

    def retire(self) -> None:
        self.retired = True  # first: a borrower that registers from now on backs off
        if not self.users:
            close_all(self.fds)

    def leave(self, key: int) -> None:
        users = self.users
        try:
            users.remove(key)
        except ValueError:
            return  # it never registered, or it was forgotten after a fork
        if self.retired and not users:
            close_all(self.fds)


class _Borrow:
    """``with holder.borrow() as (fd, protection, twin):`` -- the descriptor stays open."""

    __slots__ = ("_holder", "_owned")

    def __init__(self, holder: "Holder") -> None:
        self._holder = holder
        self._owned: _Owned | None = None

    def __enter__(self) -> State:
        holder = self._holder
        key = id(self)
        while True:
            try:
                owned = holder._current[0]
            except IndexError:
                raise ValueError(_CLOSED) from None
            self._owned = owned
            owned.users.append(key)
            if not owned.retired:
                return owned.read()
            # Retired since it was read: closed, or replaced by freeze() (read again).
            self._owned = None
            owned.leave(key)
            if holder._closed:
                raise ValueError(_CLOSED)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        owned = self._owned
        if owned is not None:
            owned.leave(id(self))  # first: interrupted after it, __del__ leaves again
            self._owned = None

    # The one __del__ of the package: it ends a borrow whose with block an exception
    # cut short before __exit__ ran (an interrupt at __exit__'s first bytecode).  A
    # weak reference's callback would do the same at twice the cost of every borrow.
    def __del__(self) -> None:
        owned = getattr(self, "_owned", None)  # None too if __init__ was cut short
        if owned is not None:
            self._owned = None
            owned.leave(id(self))


def _collected(states: "list[_Owned]", label: str, _warn: "Callable[..., None]" = warn) -> None:
    # The safety net's callback: the holder is gone, its states are not.  Nothing
    # borrows any more (a borrow holds the holder).  The default binds what teardown
    # may already have cleared from the module.
    fds = [fd for owned in states for fd in owned.fds if fd >= 0]
    for owned in states:
        close_all(owned.fds)
    if fds:
        _warn(f"unclosed AnonymousMemory {label!r} fd={fds[0]}", ResourceWarning)


class Holder:
    """The descriptor of one handle, and what closes it when.

    Args:
        pending: the caller's list holding the descriptor (and its twin, after it);
            the holder takes them out as its very last step, so until then the
            caller's ``finally`` closes them, and after that the holder does.
        protection: the descriptor's protection (a plain int, see ``_wire``).
        label: the name shown by the safety net's warning.
    """

    __slots__ = ("__weakref__", "_closed", "_current", "_states", "_watcher")

    def __init__(self, pending: list[int], protection: int, label: str) -> None:
        self._closed = False
        owned = _Owned(protection)
        self._states = [owned]  # every state whose descriptors may still be open
        self._current = [owned]  # what a borrower reads: [0] (two during a replace)
        self._watcher = watch(self, _collected, self._states, label)
        owned.fds.extend(map(pending.pop, [0] * len(pending)))  # last: ownership moves

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the descriptor may close a little later)."""
        return self._closed

    @property
    def protection(self) -> int:
        """The protection of the newest state (what ``repr`` shows, closed or not)."""
        return self._states[-1].protection

    @property
    def state(self) -> State:
        """``(fd, protection, twin)`` now; a ``ValueError`` once closed."""
        if self._closed:
            raise ValueError(_CLOSED)
        try:
            return self._current[0].read()
        except IndexError:
            raise ValueError(_CLOSED) from None

    def borrow(self) -> _Borrow:
        """A ``with`` block during which the descriptor is not closed, whoever closes."""
        return _Borrow(self)

    def replace(self, old: State, pending: list[int], protection: int) -> bool:
        """Swap the borrowed state ``old`` for the descriptor in ``pending``.

        False if the holder was closed, or the state replaced, meanwhile; the new
        descriptor is retired then.  The old one is retired: closed once nobody
        borrows it (the caller does, until its block ends).
        """
        owned = _Owned(protection)
        self._states.append(owned)
        owned.fds.extend(map(pending.pop, [0] * len(pending)))  # ownership moves: in C
        current = self._current
        previous = next((known for known in current if known.read() == old), owned)
        current.append(owned)  # both present: readers see the old one, until...
        try:
            if previous is owned:
                raise ValueError  # replaced already
            current.remove(previous)  # ...this compare-and-swap (fails if taken meanwhile)
        except ValueError:
            current.remove(owned)
            owned.retire()
            return False
        previous.retire()
        if self._closed:  # a close() ran between the append and the remove
            self.close()
        return True

    def close(self) -> None:
        """Retire every state: each descriptor closes once nobody borrows it."""
        self._closed = True
        for owned in self._states[:]:
            owned.retire()

    def forget(self) -> None:
        """Disarm the safety net: the handle was closed on purpose."""
        forget(self._watcher)


def _after_fork_in_child() -> None:
    # Only the forking thread lives on: the borrows of every other thread never end.
    for holder in watched(_collected):
        assert isinstance(holder, Holder)
        for owned in holder._states:
            owned.users.clear()
            if owned.retired:
                close_all(owned.fds)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
