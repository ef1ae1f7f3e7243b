"""The one place that chooses the platform backend, and the interface every backend has.

A backend is a module of plain functions that make the system calls -- nothing else
in anonshm makes them -- over descriptors as ints (on Windows, handles).  A function
that makes a descriptor appends it to the caller's ``pending`` list with :func:`take`,
so that it has an owner from the instant it exists.  The public
classes do the bookkeeping: state, checks, ownership, repr.

=========  ========================  ===============================================
backend    default on                creation
=========  ========================  ===============================================
linux      Linux                     ``memfd_create``, sealed against resizing
posix      macOS, the BSDs, others   ``shm_open`` of a random name, unlinked at once
windows    Windows                   an unnamed section (``CreateFileMappingW``)
=========  ========================  ===============================================

``ANONSHM_BACKEND=linux|posix|windows`` chooses another one that the platform has
(CI runs the whole suite with ``posix`` on Linux: the code macOS and the BSDs run).
"""

import os
import sys

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, Protocol

__all__ = ["Features", "Inspected", "available", "backend", "take"]


def take(pending: list[int], make: "Callable[..., int]", *args: object) -> None:
    """Append ``make(*args)`` to ``pending``: made and stored with no bytecode between.

    CPython raises ``KeyboardInterrupt`` (and runs signal handlers) only between
    bytecodes, so a descriptor made this way is never lost between its system call and
    its owner's list.  ``make`` must be a built-in (``os.dup``, ``os.open``, ...): a
    Python function has bytecode of its own.
    """
    pending.extend(map(make, *[(arg,) for arg in args]))


class Features:
    """What a backend can do, for the command line and the README's platform table.

    Attributes:
        name: ``linux``, ``posix`` or ``windows``.
        creation: the system call that makes a memory, in words.
        fixed_size: whether the kernel keeps every holder from resizing a memory.
        freeze: whether :meth:`AnonymousMemory.freeze` can work here.
        read_only: how a read-only descriptor is made.
        sockets: whether memories travel over Unix sockets (``send``/``receive``).
        names: whether the kernel records a memory's name (``/proc/<pid>/fd``).
    """

    __slots__ = ("creation", "fixed_size", "freeze", "name", "names", "read_only", "sockets")

    def __init__(
        self,
        name: str,
        creation: str,
        *,
        fixed_size: bool,
        freeze: bool,
        read_only: str,
        sockets: bool,
        names: bool,
    ) -> None:
        self.name = name
        self.creation = creation
        self.fixed_size = fixed_size
        self.freeze = freeze
        self.read_only = read_only
        self.sockets = sockets
        self.names = names

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self.__slots__)
        return f"Features({fields})"


class Inspected:
    """What a backend finds out about a descriptor handed to this process.

    Attributes:
        kind: None for a file that can be anonymous memory; else what it is, in words
            ("a pipe", "a socket", ...).
        named: whether a path leads to it (a named file is not anonymous memory).
        size: its size in bytes.
        access: ``"r"``, ``"rw"``, ``"w"``, or ``"path"`` (``O_PATH``: cannot be mapped).
        fixed_size: whether the kernel keeps every holder from resizing it (seals).
        frozen: whether the kernel refuses every new write to it, for all holders.
        revocable: whether another holder can take its pages back while it is
            mapped here (hole punching in huge pages), so that a touch is ``SIGBUS``.
    """

    __slots__ = ("access", "fixed_size", "frozen", "kind", "named", "revocable", "size")

    def __init__(
        self,
        kind: str | None,
        *,
        named: bool,
        size: int,
        access: str,
        fixed_size: bool,
        frozen: bool,
        revocable: bool,
    ) -> None:
        self.kind = kind
        self.named = named
        self.size = size
        self.access = access
        self.fixed_size = fixed_size
        self.frozen = frozen
        self.revocable = revocable


if TYPE_CHECKING:

    class Backend(Protocol):
        """The functions and constants of a backend module (checked by mypy)."""

        FEATURES: Features
        # Whether create() also gives a read-only twin, which the handle keeps: where
        # a descriptor cannot be reopened read-only later (no /proc on macOS).
        TWIN: bool

        def create(
            self, pending: list[int], name: str, size: int, directory: str | None, reserve: bool
        ) -> None:
            """Append a new read-write descriptor of ``size`` zero bytes (and its twin)."""

        def readonly(self, pending: list[int], fd: int, twin: int) -> None:
            """Append a new read-only descriptor of ``fd``'s memory (``twin``: -1 or its twin)."""

        def duplicate(self, pending: list[int], fd: int) -> None:
            """Append a new descriptor of the same open memory, with the same access."""

        def close(self, fd: int) -> None:
            """Close a descriptor."""

        def inspect(self, fd: int) -> Inspected:
            """What ``fd`` is; ``OSError`` if it cannot be looked at."""

        def freeze(self, fd: int) -> None:
            """Refuse every new write to the memory, for good (``AnonShmError`` if impossible)."""

        def kernel_name(self, fd: int) -> str | None:
            """The name the kernel recorded for ``fd``'s memory, or None."""

        def map(
            self,
            fd: int,
            offset: int,
            length: int,
            protection: int,
            *,
            populate: bool,
            hugepages: bool,
        ) -> tuple[object, memoryview]:
            """Map a window; the mapping object and a memoryview of exactly the window."""

        def write_at(self, fd: int, data: memoryview, offset: int) -> None:
            """Write all of ``data`` (1-D bytes) at ``offset``, within the memory, unmapped."""

        def read_at(self, fd: int, length: int, offset: int) -> bytes:
            """Exactly ``length`` bytes from ``offset`` (>= 1, within the memory), unmapped."""

        def format_token(self, fd: int, protection: int) -> str:
            """NSPR's token for ``fd`` on this platform."""

        def parse_token(self, token: object) -> tuple[int, int]:
            """The descriptor and protection a token names; ``TokenError`` if malformed."""

        def child_duplicate(self, pending: list[int], fd: int) -> None:
            """Append a duplicate for one child to inherit (``pass_to_child`` passes it)."""

        def pass_to_child(self, options: "dict[str, Any]", fds: list[int]) -> None:
            """Set ``subprocess.Popen`` options so that the child gets exactly ``fds``."""

        def flush(self, mapping: object) -> None:
            """Write a map's pages back to its file, where there is one."""

        def unmap(self, mapping: object, buf: memoryview) -> None:
            """Unmap, unless views exported from ``buf`` are alive: then the last one does."""


def available() -> tuple[str, ...]:
    """The backends this platform has, the default first."""
    if sys.platform == "linux":
        return ("linux", "posix")
    if sys.platform == "win32":
        return ("windows",)
    return ("posix",)


def _choose() -> str:
    choices = available()
    wanted = os.environ.get("ANONSHM_BACKEND")
    if not wanted:
        return choices[0]
    if wanted not in choices:
        raise ImportError(
            f"ANONSHM_BACKEND={wanted!r}: anonshm on {sys.platform} has the backends "
            f"{', '.join(choices)} (the default is {choices[0]})"
        )
    return wanted


NAME: "Final" = _choose()
if TYPE_CHECKING:
    backend: Backend
    # Each backend module implements the interface (mypy checks modules as protocols).
    _checked: Backend
    if sys.platform == "win32":
        from . import _windows

        _checked = _windows
    else:
        from . import _posix

        _checked = _posix
        if sys.platform == "linux":
            from . import _linux

            _checked = _linux
elif NAME == "linux":
    from . import _linux as backend
elif NAME == "windows":
    from . import _windows as backend
else:
    from . import _posix as backend
