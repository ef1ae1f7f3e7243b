"""Holder: who owns a memory's descriptor, at every line, in every thread and after fork.

A handle's descriptor number must never be used after it was closed: by then the
number may belong to some other file (the next ``open`` reuses it), and a map, a seal
or a send would act on that file instead.  A lock around every use does not do:
a ``close()`` from a signal handler (or a ``__del__``) that interrupts this thread's
own ``map()`` re-enters it, and a child forked while another thread held it waits for
ever.  So the holder needs no lock at all:

- Every use of the descriptor *borrows* it (``with holder.borrow() as (fd, prot):``).
  ``close()`` never closes a borrowed descriptor: it retires it, and the last borrower
  to leave closes it.  Until then the number stays this file's, so whatever a borrower
  was doing acts on the right file, and a number in use can never be reused.
- The state is one tuple ``(fd, protection)`` in a list, replaced whole (``freeze()``
  swaps in a read-only descriptor), so a borrower always reads a descriptor and its
  protection together.
- Every step that changes the state is one C-level list operation (``append``, ``pop``,
  ``remove``), atomic under the GIL and in free-threaded builds alike.  A descriptor is
  always in exactly one place: the caller's ``pending`` list (closed by the caller's
  ``finally``) or the holder's lists; it moves between them within one line, so an
  exception raised at any line (Ctrl-C) leaves nothing open and closes nothing foreign.
- After ``fork`` the child has only the forking thread: the borrows of the others can
  never end there, so they are forgotten (``os.register_at_fork``) and the child can
  use and close everything it inherited.

The safety net is here too: a holder collected unclosed (its handle was dropped)
closes its descriptors and issues a ``ResourceWarning``.  It is a weak reference whose
callback holds only the lists, never the holder (see CPython's ``weakref.finalize``,
which costs about 2 us per object; this costs about 0.1 us).
"""

import os
from _warnings import warn  # what warnings.warn is, without importing warnings.py
from _weakref import ref  # weakref.ref, without importing weakref.py

from ._backend import backend
from ._net import forget, watch, watched

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Final

__all__ = ["Holder", "State", "close_all"]

# (descriptor, protection, twin): read together, replaced together.  The twin is the
# read-only descriptor a backend without /proc keeps beside a read-write one, or -1.
State = tuple[int, int, int]

_CLOSED: "Final" = "I/O operation on a closed AnonymousMemory"


_close = backend.close


def close_all(pending: list[int]) -> None:
    """Close what a failed call still owns (``pending`` is empty once a holder took it).

    Safe to call again after an interruption: each descriptor leaves the list in the
    line that closes it.
    """
    while pending:
        _close(pending.pop())  # one line: popped and closed together


def _collected(
    current: list[State],
    retired: list[int],
    label: str,
    _warn: "Callable[..., None]" = warn,
    _close: "Callable[[int], None]" = _close,
) -> None:
    # The safety net's callback: the holder is gone, its lists are not.  Defaults bind
    # what interpreter teardown may already have cleared from the module.
    fds = [fd for state in current for fd in state[::2] if fd >= 0]
    fds += [fd for fd in retired if fd >= 0]
    current.clear()
    retired.clear()
    if not fds:
        return
    # Close first: with warnings as errors the warning raises, and the fds must go anyway.
    try:
        for fd in fds:
            _close(fd)
    finally:
        _warn(f"unclosed AnonymousMemory {label!r} fd={fds[0]}", ResourceWarning)


class _Borrow:
    """``with holder.borrow() as (fd, protection):`` -- the descriptor stays this file's.

    The holder counts a borrow by its token, a weak reference to the borrow whose
    callback ends it: a borrow whose ``with`` block never got to ``__exit__`` (an
    exception raised at the very line that leaves the block) ends when the borrow
    object goes, so a retired descriptor is never kept open for ever.
    """

    __slots__ = ("__weakref__", "_holder", "_token")

    def __init__(self, holder: "Holder") -> None:
        self._holder = holder
        self._token = ref(self, holder._leave)

    def __enter__(self) -> State:
        holder = self._holder
        try:
            holder._users.append(self._token)
            return holder._current[0]
        except IndexError:
            holder._leave(self._token)
            raise ValueError(_CLOSED) from None
        except BaseException:  # interrupted (Ctrl-C) after the append
            holder._leave(self._token)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        holder = self._holder  # Holder._leave, inlined: this is every map's path
        users = holder._users
        try:
            users.remove(self._token)
        except ValueError:
            return  # forgotten after a fork
        if not users and holder._retired:
            holder._drain()


class Holder:
    """The descriptor of one handle, and what closes it when.

    Args:
        pending: the caller's list holding the descriptor (and its twin, after it);
            the holder takes them out as its very last step, so until then the
            caller's ``finally`` closes them, and after that the holder does.
        protection: the descriptor's protection (a plain int, see ``_wire``).
        label: the name shown by the safety net's warning.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_current",
        "_retired",
        "_users",
        "_watcher",
        "last_protection",
    )

    def __init__(self, pending: list[int], protection: int, label: str) -> None:
        self._closed = False
        self.last_protection = protection  # what repr() shows once closed
        self._users: list[ref[_Borrow]] = []
        self._retired: list[int] = []
        self._current: list[State] = []
        self._watcher = watch(self, _collected, self._current, self._retired, label)
        # Last, in one line: ownership moves here.
        self._current.append((pending.pop(0), protection, pending.pop() if pending else -1))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the descriptor may close a little later)."""
        return self._closed

    @property
    def state(self) -> State:
        """``(fd, protection)`` now; a ``ValueError`` once closed."""
        try:
            return self._current[0]
        except IndexError:
            raise ValueError(_CLOSED) from None

    def borrow(self) -> _Borrow:
        """A ``with`` block during which the descriptor is not closed, whoever closes."""
        return _Borrow(self)

    def replace(self, old: State, pending: list[int], protection: int) -> bool:
        """Swap ``old`` for the descriptor in ``pending``; False if closed meanwhile.

        Call it while borrowing ``old``.  The old descriptor is retired (closed once
        nobody borrows it); if the holder was closed meanwhile, the new one is too.
        """
        current = self._current
        # One line: moved from `pending` (both old and new present: readers see old).
        current.append(new := (pending.pop(0), protection, pending.pop() if pending else -1))
        try:
            # Compare-and-swap: remove() fails if a close() or another replace() took
            # `old` meanwhile.  One line: removed and retired together (None or ...).
            current.remove(old) or self._retired.extend(old[::2])  # type: ignore[func-returns-value]
        except ValueError:
            try:
                current.remove(new) or self._retired.extend(new[::2])  # type: ignore[func-returns-value]
            except ValueError:
                pass  # a close() took it, and retired it
            return False
        self.last_protection = protection
        if self._closed:  # a close() ran between the append and the remove
            self.close()
        return True

    def close(self) -> bool:
        """Close the descriptor (once nobody borrows it); True if this call closed it."""
        self._closed = True
        current = self._current
        closed = False
        while current:
            try:
                self._retired.extend(current.pop()[::2])  # one line: never in no list
            except IndexError:
                break
            closed = True
        if not self._users:  # closes it now, or what an interrupted borrower left
            self._drain()
        return closed

    def forget(self) -> None:
        """Disarm the safety net: the handle was closed on purpose."""
        forget(self._watcher)

    def _leave(self, token: "ref[_Borrow]") -> None:
        users = self._users
        try:
            users.remove(token)
        except ValueError:
            return  # interrupted before the append, or forgotten after a fork
        if not users and self._retired:
            self._drain()

    def _drain(self) -> None:
        retired = self._retired
        while retired:
            try:
                _close(fd) if (fd := retired.pop()) >= 0 else None  # one line: popped, closed
            except IndexError:
                break


def _after_fork_in_child() -> None:
    # Only the forking thread lives on: the borrows of every other thread never end.
    for holder in watched(_collected):
        assert isinstance(holder, Holder)
        holder._users.clear()
        holder._drain()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
