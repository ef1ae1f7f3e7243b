"""AnonymousMemory: a descriptor of memory that has no name, and what it can do."""

import errno
import os
import sys
from _weakref import ref

from . import _validate
from ._backend import backend
from ._compat import DEFAULT_PROTECTION, protection_member
from ._errors import AnonShmError, InheritError, TokenError
from ._hints import join
from ._holder import Holder, Pending, close_all, close_first
from ._map import MemoryMap
from ._wire import (
    INHERIT_VARIABLE,
    PR_DESC_FILE,
    PROTECTION_NAMES,
    READ_ONLY,
    READ_WRITE,
    allows,
    check_name,
    check_protection,
    parse_inherit_fds,
)

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import socket
    from types import TracebackType
    from typing import Any, Final, Self, final

    import typing_extensions

    from . import _handoff
    from ._protection import Protection
else:
    from ._compat import final

    _handoff = None  # imported by the first send or receive: see _load_handoff
join(
    globals(), "Any", "Final", "Protection", "Self", "TracebackType", "socket", "typing_extensions"
)

__all__ = ["DEFAULT_NAME", "AnonymousMemory", "ForChild"]

DEFAULT_NAME: "Final" = "anonshm"
_MAX_SIZE: "Final" = 2**63 - 1  # off_t
_PRUNE_AT: "Final" = 64  # maps tracked before the dead ones are swept out


def _check_size(value: object) -> int:
    size = value if type(value) is int else _check_int(value, "size")
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, not {size}")
    if size > _MAX_SIZE:
        raise ValueError(f"size {size} is more than a file offset can hold ({_MAX_SIZE})")
    return size


def _importable_name(recorded: str | None, fallback: str) -> str:
    # Another program's memfd may carry a name anonshm cannot hand on (a ':', bytes
    # that are not UTF-8, read back as surrogates): such a memory gets the fallback,
    # as does one whose kernel records no name (the posix backend).
    if recorded is None:
        return fallback
    try:
        return check_name(recorded)
    except ValueError:
        return fallback


def _no_sockets() -> AnonShmError:
    return AnonShmError(
        f"the {backend.FEATURES.name} backend cannot send memory over a socket: its "
        "sockets carry no handles (hand it on with spawn(inherit=...), a token, or "
        "multiprocessing)"
    )


def _load_handoff() -> None:
    # struct and _socket cost a child that only maps inherited memory 0.5 ms; and a
    # function-level import statement costs each handoff 0.8 us, so it is kept here.
    global _handoff
    from . import _handoff as module  # noqa: PLC0415

    _handoff = module


def _check_int(value: object, what: str, alternative: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int{alternative}, not {type(value).__name__}")
    return int(value)  # an int subclass, as a plain int


def _check_flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{what} must be True or False, not {value!r}")
    return value


@final
class AnonymousMemory:
    """Shared memory with no name, reachable only through descriptors handed over.

    Creating one makes a new memory of ``size`` zero bytes: on Linux a ``memfd``
    (no path in any filesystem, sealed against growing and shrinking), or with
    ``directory=`` a backing file there that no path leads to.  The memory is shared
    with a child by :func:`~anonshm.spawn` (``inherit=[mem]``, NSPR's first protocol) or
    by :meth:`export` and :meth:`from_token` (the second).

    Who frees what: :meth:`close` (or leaving the ``with`` block) closes *this
    process's* descriptor and unmaps every map made through this object.  The memory
    itself ceases to exist only when its last holder anywhere -- a child, a map, a
    duplicate -- lets go, and then the kernel frees it, crash or not.

    Args:
        size: the exact size in bytes, an ``int`` >= 1.
        name: a label (not a path): the key for inheritance, and what
            ``/proc/<pid>/fd`` shows as ``memfd:<name>``.  No ``:``, no NUL, at most
            249 bytes of UTF-8.
        directory: make the memory a file in this directory instead (NSPR's strategy):
            ``O_TMPFILE`` where the filesystem has it, else an exclusive random name,
            mode 0600, unlinked before the constructor returns.  Such memory cannot be
            sealed: its size is not enforced by the kernel and it cannot be frozen.
        protection: the most that a map of this memory may ask.  ``READ_ONLY`` and
            ``WRITE_COPY`` memories hold a read-only descriptor.
        reserve: allocate every page now, so that a full filesystem or memory limit is
            an ``OSError`` here and never a ``SIGBUS`` on a later write.

    Raises:
        TypeError: ``size``, ``name`` or ``protection`` has the wrong type.
        ValueError: ``size`` < 1, or ``name`` is not a valid label.
        OSError: the kernel refused (``ENOENT``/``EACCES`` for ``directory``,
            ``ENOSPC``/``ENOMEM`` with ``reserve``); nothing is left behind.

    Example:
        >>> from anonshm import AnonymousMemory
        >>> with AnonymousMemory(4096, name="frame") as mem:
        ...     with mem.map() as view:
        ...         view[:5] = b"hello"
        ...     with mem.map(length=5) as again:
        ...         mem.size, mem.name, again.buf.tobytes()
        (4096, 'frame', b'hello')
    """

    # Defaults: close() and repr() work on an object whose __init__ failed.
    _holder: Holder | None = None
    _size: int = 0
    _name: str = DEFAULT_NAME
    _maps: "list[ref[MemoryMap]]"
    _prune_at: int = _PRUNE_AT
    _froze: bool = False  # freeze() ran here (Windows: no seal to read back)

    def __init__(
        self,
        size: int,
        *,
        name: str = DEFAULT_NAME,
        directory: str | os.PathLike[str] | None = None,
        protection: "Protection" = DEFAULT_PROTECTION,
        reserve: bool = False,
    ) -> None:
        size = _check_size(size)
        name = check_name(name)
        prot = check_protection(protection, "protection")
        path = None if directory is None else os.fsdecode(directory)
        reserve = _check_flag(reserve, "reserve")
        # Every descriptor is in `pending` until the holder takes it: whatever line an
        # exception lands on, the finally closes what nobody else owns yet.
        pending = Pending()
        try:
            backend.create(pending, name, size, path, reserve)
            if prot != READ_WRITE:
                # A read-only memory holds only a read-only descriptor: the twin where
                # the backend made one, else one made now.
                if not backend.TWIN:
                    backend.readonly(pending, pending[0], -1)
                close_first(pending)  # the read-write one: never handed anywhere
            self._own(pending, size, name, prot)
        finally:
            close_all(pending)

    def _own(self, pending: list[int], size: int, name: str, protection: int) -> None:
        """Take the descriptor in ``pending`` (and its twin after it; see ``_holder``)."""
        self._size = size
        self._name = name
        self._maps = []
        self._holder = Holder(pending, protection, name)

    @classmethod
    def _adopt(
        cls,
        pending: list[int],
        protection: int | None,
        error: type[AnonShmError],
        what: str,
        *,
        name: str | None = None,
        size: int | None = None,
        fixed_size: bool = False,
        handed: bool = False,
        fallback: str = DEFAULT_NAME,
    ) -> "Self":
        """Own ``pending[-1]`` (this process's own descriptor) once it proves to be memory.

        On failure ``error`` is raised, naming ``what`` was imported; the caller's
        ``finally`` closes what is still in ``pending``.  ``handed``: the protection
        is what the sender's handle had when it sent (a socket, multiprocessing), and a
        memory it froze since arrives READ_ONLY; a token's asks for itself instead.
        ``fallback``: the name where the kernel recorded none that anonshm can carry.
        """
        fd = pending[-1]
        try:
            info = backend.inspect(fd)
        except OSError as exc:
            raise error(f"{what}: cannot inspect the descriptor ({exc.strerror})") from exc
        protection = _validate.check(
            info, protection, error, what, size=size, stable=fixed_size, handed=handed
        )
        if name is None:
            name = _importable_name(backend.kernel_name(fd), fallback)
        if info.access == "rw" and protection != READ_WRITE:
            # A read-only memory holds a read-only descriptor, whatever it was given:
            # handed on, it must not give the next process write access back.
            backend.readonly(pending, fd, -1)
            close_first(pending)
        self = cls.__new__(cls)
        self._own(pending, _validate.exact_size(info, size), name, protection)
        return self

    @classmethod
    def _import(
        cls,
        fd: int,
        protection: int | None,
        error: type[AnonShmError],
        what: str,
        fallback: str = DEFAULT_NAME,
    ) -> "Self":
        # Imports never adopt: the number handed over stays with whoever owns it, and
        # only this call's own duplicate ever goes into `pending`.
        pending = Pending()
        try:
            try:
                backend.duplicate(pending, fd)  # close-on-exec
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                raise error(
                    f"{what}: descriptor {fd} is not open in this process (the parent must "
                    "pass it down, e.g. pass_fds=[mem.fileno()], and keep its handle open; "
                    "a token exported before freeze() is stale: freeze() replaces the "
                    "descriptor, so export again after it)"
                ) from None
            return cls._adopt(pending, protection, error, what, fallback=fallback)
        finally:
            close_all(pending)

    @classmethod
    def from_token(cls, token: str) -> "Self":
        """Import the memory an :meth:`export` token names (NSPR's second protocol).

        The token's descriptor must be open in this process (the parent passed it down,
        e.g. with ``pass_fds``) and be an anonymous shared memory.  The new object owns
        a duplicate: the number in the token is never closed by anonshm, so importing
        a token twice gives two independent handles.

        Raises:
            TypeError: ``token`` is not a ``str``.
            TokenError: the token is malformed, its descriptor is not open, is not an
                anonymous memory, or is read-only while the token asks ``READ_WRITE``.

        Example:
            >>> import sys
            >>> from anonshm import AnonymousMemory
            >>> mem = AnonymousMemory.from_token(sys.argv[1])  # doctest: +SKIP
        """
        fd, protection = backend.parse_token(token)
        return cls._import(fd, protection, TokenError, f"token {token!r}")

    @classmethod
    def inherited(cls, name: str = DEFAULT_NAME) -> "Self":
        """Import the memory a parent passed under ``name`` (NSPR's first protocol).

        Looks ``name`` up in ``NSPR_INHERIT_FDS`` as NSPR's ``PR_GetInheritedFD`` does
        (exact name), so the parent may be :func:`~anonshm.spawn` or an NSPR program.
        The protection comes from the descriptor: a read-only descriptor gives a
        ``READ_ONLY`` memory.  Every call returns a new, independent handle with a
        duplicate of the inherited descriptor, which itself is never closed.

        Raises:
            InheritError: the variable is absent or malformed, has no entry ``name``,
                or the entry is not an open anonymous memory.

        Example:
            >>> from anonshm import AnonymousMemory
            >>> with AnonymousMemory.inherited("frame") as mem:  # doctest: +SKIP
            ...     print(mem.map().buf[:5].tobytes())
        """
        check_name(name)
        value = os.environ.get(INHERIT_VARIABLE)
        if value is None:
            raise InheritError(f"no memory {name!r} was inherited: {INHERIT_VARIABLE} is not set")
        entries = parse_inherit_fds(value)
        try:
            kind, fd = entries[name]
        except KeyError:
            raise InheritError(
                f"no memory {name!r} was inherited: {INHERIT_VARIABLE} names only "
                f"{', '.join(map(repr, entries))}"
            ) from None
        what = f"inherited {name!r} (fd {fd})"
        if kind != PR_DESC_FILE:
            raise InheritError(f"{what} has descriptor type {kind}, not a file (1)")
        return cls._import(fd, None, InheritError, what, fallback=name)

    @property
    def size(self) -> int:
        """The size in bytes, exactly as created."""
        return self._size

    @property
    def name(self) -> str:
        """The label: the key for inheritance and the name in ``/proc/<pid>/fd``."""
        return self._name

    @property
    def protection(self) -> "Protection":
        """The most a map of this memory may ask (``READ_ONLY`` once frozen)."""
        return protection_member(self._protection)

    @property
    def _protection(self) -> int:
        # Read from the state, where freeze() changes it together with the descriptor.
        holder = self._holder
        if holder is None:
            return READ_WRITE
        return holder.protection

    @property
    def closed(self) -> bool:
        """Whether this handle is closed (the memory may live on elsewhere)."""
        holder = self._holder
        return holder is None or holder.closed

    def _live(self) -> Holder:
        holder = self._holder
        if holder is None or holder.closed:
            raise ValueError("I/O operation on a closed AnonymousMemory")
        return holder

    @property
    def fixed_size(self) -> bool:
        """Whether the kernel keeps every holder from growing or shrinking the memory.

        True for memfd memory (anonshm seals it at creation); False for ``directory=``
        files and unsealed memory from elsewhere, which any holder with a writable
        descriptor may truncate, and then a touch beyond the new end is ``SIGBUS``.
        """
        with self._live().borrow() as (fd, _, _):
            return backend.inspect(fd).fixed_size

    @property
    def frozen(self) -> bool:
        """Whether the kernel refuses every new write to the memory, for all holders."""
        with self._live().borrow() as (fd, _, _):
            return backend.inspect(fd).frozen

    def fileno(self) -> int:
        """This handle's descriptor (close-on-exec; owned by this object: don't close it).

        Pass it to a child you start yourself (``pass_fds=[mem.fileno()]``) together
        with :meth:`export`'s token.

        Example:
            >>> import os
            >>> from anonshm import AnonymousMemory
            >>> with AnonymousMemory(16) as mem:
            ...     os.get_inheritable(mem.fileno())
            False
        """
        return self._live().state[0]

    def map(
        self,
        offset: int = 0,
        length: int | None = None,
        *,
        protection: "Protection | None" = None,
        populate: bool = False,
        hugepages: bool = False,
    ) -> MemoryMap:
        """Map ``length`` bytes from ``offset`` (any offset) into this process.

        Args:
            offset: where the window starts, in bytes; need not be page-aligned.
            length: the window's size; by default up to the end of the memory.
            protection: the map's protection; by default the memory's.
            populate: fault every page in now (``MAP_POPULATE``), so the first touch
                of each page costs nothing later.
            hugepages: advise transparent huge pages (``MADV_HUGEPAGE``) for the
                window; the kernel uses them for shared memory only where
                ``/sys/kernel/mm/transparent_hugepage/shmem_enabled`` allows
                (``advise``).  It matters on the map that first writes the pages:
                they are allocated 2 MiB at a time then, and every later map of them,
                in any process, uses them so (far fewer page faults; see benchmarks/).

        Raises:
            ValueError: the window is empty or outside the memory, or this handle is
                closed.
            PermissionError: ``protection`` asks more than the memory allows.

        Example:
            >>> from anonshm import AnonymousMemory, Protection
            >>> with AnonymousMemory(100) as mem:
            ...     with mem.map(10, 4, protection=Protection.READ_ONLY) as view:
            ...         view.buf.readonly, len(view)
            (True, 4)
        """
        # Checks in line, plain types first: this is the path of every handoff.
        holder = self._holder
        if holder is None or holder._closed:
            raise ValueError("I/O operation on a closed AnonymousMemory")
        size = self._size
        given = length
        if type(offset) is not int:
            offset = _check_int(offset, "offset")
        if length is None:
            length = size - offset
        elif type(length) is not int:
            length = _check_int(length, "length", " or None")
        if not 0 <= offset < size or not 0 < length <= size - offset:
            raise ValueError(
                f"window offset={offset} length={given} is empty or outside the memory "
                f"of {size} bytes"
            )
        wanted = None if protection is None else check_protection(protection, "protection")
        if populate is not False:
            populate = _check_flag(populate, "populate")
        if hugepages is not False:
            hugepages = _check_flag(hugepages, "hugepages")
        # Borrowed: a close() meanwhile (another thread, a signal handler) leaves the
        # number this memory's until the map is made, and the protection is the one
        # that goes with this descriptor.
        with holder.borrow() as (fd, have, _):
            prot = have if wanted is None else self._map_protection(have, wanted)
            try:
                view = MemoryMap(
                    fd,
                    offset,
                    length,
                    prot,
                    populate=populate,
                    hugepages=hugepages,
                    label=self._name,
                )
            except PermissionError as exc:
                if exc.errno != errno.EPERM:
                    raise
                # EPERM from mmap: the seal of a memory frozen through another handle.
                raise PermissionError(
                    exc.errno,
                    f"cannot map {self._name!r} {PROTECTION_NAMES[prot]}: the memory is frozen",
                ) from exc
        self._track(view)
        if holder._closed:  # close() ran meanwhile; its sweep may have missed this map
            view.close()
            raise ValueError(f"AnonymousMemory {self._name!r} was closed while map() ran")
        return view

    def _map_protection(self, have: int, prot: int) -> int:
        if not allows(have, prot):
            raise PermissionError(
                f"cannot map {self._name!r} {PROTECTION_NAMES[prot]}: the memory is "
                f"{PROTECTION_NAMES[have]}"
            )
        return prot

    def _track(self, view: MemoryMap) -> None:
        # Weak references, so a map dropped unclosed is not kept alive by its memory.
        maps = self._maps
        maps.append(ref(view))
        if len(maps) > self._prune_at:
            maps[:] = [known for known in maps if (live := known()) is not None and not live.closed]
            self._prune_at = 2 * len(maps) + _PRUNE_AT

    def export(self) -> str:
        """NSPR's token for this memory, ``"<fd>:<prot>"`` (the second protocol).

        The token is only a number: it is valid in a child that inherits this very
        descriptor (``subprocess.Popen(..., pass_fds=[mem.fileno()])``) while this
        handle stays open, and meaningless anywhere else.

        Example:
            >>> from anonshm import AnonymousMemory
            >>> with AnonymousMemory(16) as mem:
            ...     mem.export() == f"{mem.fileno()}:1"
            True
        """
        fd, protection, _ = self._live().state  # together: freeze() changes both
        return backend.format_token(fd, protection)

    def for_child(self) -> "ForChild":
        """Hand this memory to one child that you start yourself: a token and Popen options.

        The portable form of the second protocol.  A ``with`` block gives
        ``(token, options)``: a duplicate made for that child alone, its NSPR token, and
        the ``subprocess.Popen`` keyword arguments that pass it (``pass_fds`` on POSIX,
        a ``STARTUPINFO`` handle list on Windows, where the duplicate is inheritable
        while the block lasts).  Start the child inside the block; leaving it closes
        the duplicate, which the child then holds alone.

        Example:
            >>> import subprocess, sys
            >>> from anonshm import AnonymousMemory
            >>> code = "import sys; from anonshm import AnonymousMemory as M; "
            >>> code += "print(M.from_token(sys.argv[1]).size)"
            >>> with AnonymousMemory(64) as mem, mem.for_child() as (token, options):
            ...     done = subprocess.run([sys.executable, "-c", code, token],
            ...                           capture_output=True, text=True, **options)
            >>> done.stdout.strip()
            '64'
        """
        return ForChild(self)

    def duplicate(self, *, protection: "Protection | None" = None) -> "AnonymousMemory":
        """Another handle on the same memory, with a descriptor of its own.

        With ``protection=READ_ONLY`` (or ``WRITE_COPY``) the new handle holds a
        read-only descriptor, and so does every process it is handed to.  That stops
        accidents, not a hostile child of the same user, which can reopen
        ``/proc/self/fd/N`` for writing: :meth:`freeze` is what the kernel enforces.

        Raises:
            PermissionError: ``protection`` asks more than this handle has.

        Example:
            >>> from anonshm import AnonymousMemory, Protection
            >>> with AnonymousMemory(16) as mem:
            ...     with mem.duplicate(protection=Protection.READ_ONLY) as reader:
            ...         with reader.map() as view:
            ...             reader.protection.name, view.buf.readonly
            ('READ_ONLY', True)
        """
        holder = self._live()
        pending = Pending()
        try:
            with holder.borrow() as (fd, have, twin):
                wanted = have if protection is None else check_protection(protection, "protection")
                if not allows(have, wanted):
                    raise PermissionError(
                        f"cannot duplicate a {PROTECTION_NAMES[have]} memory as "
                        f"{PROTECTION_NAMES[wanted]}"
                    )
                if wanted == READ_WRITE:
                    backend.duplicate(pending, fd)
                    if twin >= 0:  # the twin too: the copy hands out read-only ones as well
                        backend.duplicate(pending, twin)
                else:
                    backend.readonly(pending, fd, twin)
            copy = type(self).__new__(type(self))
            copy._own(pending, self._size, self._name, wanted)
            return copy
        finally:
            close_all(pending)

    def freeze(self) -> None:
        """Make the memory read-only for every holder, for good; maps open now keep working.

        The producer writes through a map, freezes, then hands the memory on: no
        holder -- this one included -- can make a new writable map or write through a
        descriptor again, and children receive read-only descriptors.  The kernel
        enforces it with ``F_SEAL_FUTURE_WRITE`` (Linux >= 5.1).  This handle's
        descriptor is replaced by a read-only one, so ``fileno()`` changes: a token
        exported before the freeze is stale; export again after it.

        The freeze is all or nothing: the read-only descriptor is made first, so when
        that fails (no ``/proc``, a full descriptor table) nothing is sealed and the
        handle stays as it was.

        Raises:
            AnonShmError: the memory cannot be frozen (a ``directory=`` file, a
                read-only handle, or a kernel older than 5.1).
            OSError: no read-only descriptor could be made (``EMFILE``; ``ENOENT``
                when ``/proc`` is not mounted); nothing was changed.

        Example:
            >>> from anonshm import AnonymousMemory
            >>> with AnonymousMemory(16) as mem, mem.map() as producer:
            ...     producer[:4] = b"done"
            ...     mem.freeze()
            ...     producer[4:8] = b"+mor"  # a map made before the freeze still writes
            ...     mem.frozen, mem.protection.name, mem.export().endswith(":0")
            (True, 'READ_ONLY', True)
        """
        holder = self._live()
        pending = Pending()
        try:
            # Borrowed: the seal, which cannot be undone, lands on this memory even if
            # a close() (another thread, a signal handler) runs meanwhile.
            with holder.borrow() as state:
                fd, have, twin = state
                frozen = backend.inspect(fd).frozen
                if have != READ_WRITE:
                    if frozen or self._froze:
                        return
                    raise AnonShmError(f"cannot freeze {self._name!r} through a read-only handle")
                backend.readonly(pending, fd, twin)  # all that can fail, first
                if not frozen:
                    try:
                        backend.freeze(fd)
                    except AnonShmError as exc:
                        # Refused because another freeze() (another thread or handle)
                        # sealed it first: frozen all the same.
                        if not backend.inspect(fd).frozen:
                            raise AnonShmError(f"cannot freeze {self._name!r}: {exc}") from None
                holder.replace(state, pending, READ_ONLY)
                self._froze = True
        finally:
            close_all(pending)

    def _handoff_fd(self, pending: list[int]) -> None:
        """Append a new duplicate for one child to ``pending`` (``backend.child_duplicate``).

        The caller owns it from then on (and passes, then closes it); it is made while
        the descriptor is borrowed, so it is a duplicate of this memory even when a
        close() in another thread runs meanwhile.
        """
        with self._live().borrow() as (fd, _, _):
            backend.child_duplicate(pending, fd)

    def close(self) -> None:
        """Close this handle and unmap every map made through it; again does nothing.

        The memory itself lives on while any other holder (a child, a duplicate, a
        view still exported from a map) keeps it; the kernel frees it after the last.
        A ``send()`` or ``map()`` that another thread has under way keeps the
        descriptor open until it is done; the handle is closed at once.

        Example:
            >>> from anonshm import AnonymousMemory
            >>> mem = AnonymousMemory(16)
            >>> view = mem.map()
            >>> mem.close(); mem.close()
            >>> mem.closed, view.closed
            (True, True)
        """
        holder = self._holder
        if holder is None:
            return
        try:
            holder.close()  # first: a map() that starts now sees it closed
            holder.forget()
        finally:
            # Each map is forgotten only once all are closed: a close() interrupted
            # half-way (Ctrl-C) and called again closes the rest.
            maps = self._maps
            for known in maps[:]:
                view = known()
                if view is not None:
                    view.close()
            maps.clear()

    def send(self, sock: "socket.socket") -> None:
        """Hand this memory to the process at the other end of a Unix socket.

        The descriptor travels with ``SCM_RIGHTS``, with the name, size and protection;
        the receiver calls :meth:`receive`.  This handle stays open and owned here.
        A ``close()`` in another thread while the send waits does not wait for it:
        the descriptor is closed when the send is done.

        Raises:
            OSError: the socket is not a Unix socket (``EAFNOSUPPORT``, checked before
                anything is sent), not connected, or the send failed.
            AnonShmError: the backend's sockets carry no descriptors (Windows).

        Example:
            >>> import socket
            >>> from anonshm import AnonymousMemory
            >>> left, right = socket.socketpair()
            >>> with AnonymousMemory(8, name="frame") as mem:
            ...     mem.send(left)
            ...     with AnonymousMemory.receive(right) as got:
            ...         got.name, got.size
            ('frame', 8)
            >>> left.close(); right.close()
        """
        if sys.platform == "win32" or not backend.FEATURES.sockets:
            raise _no_sockets()
        if _handoff is None:
            _load_handoff()
        # Borrowed: the message announces the protection of the very descriptor sent.
        with self._live().borrow() as (fd, protection, _):
            _handoff.send_fd(sock, fd, _handoff.message(self._name, self._size, protection))

    @classmethod
    def receive(cls, sock: "socket.socket", *, allow_resizable: bool = False) -> "Self":
        """Receive a memory that a peer sent with :meth:`send` over a Unix socket.

        Raises:
            TokenError: the message is garbage, cut short, carries no descriptor or
                too many, or the descriptor is not the anonymous memory announced.
                Every descriptor that arrived is closed.
            EOFError: the peer closed the socket before sending anything.
            OSError: the socket is not a Unix socket (``EAFNOSUPPORT``); or this
                process's descriptor table is full (``EMFILE``: the memory is dropped).
            TimeoutError: on a stream socket with a timeout (``BlockingIOError`` when
                non-blocking), the whole message has not arrived; nothing was consumed,
                so receive again later.
            AnonShmError: the backend's sockets carry no descriptors (Windows).

        A memory whose pages another holder can take away is refused unless
        ``allow_resizable=True``: one whose size the kernel does not fix (not sealed:
        a ``directory=`` file, or a memfd from another program), or one backed by huge
        pages that is not frozen (its sender could punch a hole and take them back).
        Either way a later touch would kill this process with ``SIGBUS``.  After a
        ``TokenError`` on a stream socket the rest of the rejected message may still be
        queued: close the socket rather than receiving again.  A memory the sender froze
        after sending it arrives ``READ_ONLY``.

        A peer that sends half a message and then waits keeps a blocking socket
        waiting too: give the socket a timeout (``sock.settimeout``) when the peer is
        not trusted; on ``TimeoutError`` nothing is left open.

        Example:
            >>> import socket
            >>> from anonshm import AnonymousMemory
            >>> ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            >>> with AnonymousMemory(32, name="shared") as mem:
            ...     mem.send(ours)
            >>> with AnonymousMemory.receive(theirs) as got:  # the sender closed its handle
            ...     got.name, got.size, got.protection.name
            ('shared', 32, 'READ_WRITE')
            >>> ours.close(); theirs.close()
        """
        allow_resizable = _check_flag(allow_resizable, "allow_resizable")
        if sys.platform == "win32" or not backend.FEATURES.sockets:
            raise _no_sockets()
        if _handoff is None:
            _load_handoff()
        pending = Pending()
        try:
            name, size, protection = _handoff.receive_fd(sock, pending)
            what = f"memory received as {name!r}"
            return cls._adopt(
                pending,
                protection,
                TokenError,
                what,
                name=name,
                size=size,
                fixed_size=not allow_resizable,
                handed=True,
            )
        finally:
            close_all(pending)

    def write(self, data: "typing_extensions.Buffer", offset: int = 0) -> int:
        r"""Copy ``data`` into the memory at ``offset``, through the kernel, with no map.

        ``pwrite`` on POSIX; on Windows a view of just the pages involved, mapped for
        the copy alone.  Filling fresh memory so skips the page fault a map takes on
        each page (see ``benchmarks/_fill.py``).  The memory never grows: bytes that
        would end past it are refused, and nothing is written.

        Args:
            data: any bytes-like object (``bytes``, ``bytearray``, ``memoryview``, a
                numpy array...); one that is not C-contiguous is copied first, in C
                order.
            offset: where the first byte goes, ``0 <= offset <= size``.

        Returns:
            The number of bytes written: all of them (``memoryview(data).nbytes``).

        Raises:
            TypeError: ``data`` is not bytes-like, or ``offset`` is not an int.
            ValueError: the bytes would end past the end of the memory, ``offset``
                is negative, or this handle is closed.
            PermissionError: the memory is ``READ_ONLY`` (frozen, here or through
                another handle: ``EPERM``) or ``WRITE_COPY`` (its writes stay private
                to each map).

        Example:
            >>> from anonshm import AnonymousMemory
            >>> with AnonymousMemory(16) as mem:
            ...     mem.write(b"hello", offset=4)
            ...     mem.read(9)
            5
            b'\x00\x00\x00\x00hello'
        """
        holder = self._live()
        if type(offset) is not int:
            offset = _check_int(offset, "offset")
        try:
            view = memoryview(data)
        except TypeError:
            what = type(data).__name__
            raise TypeError(f"data must be a bytes-like object, not {what}") from None
        with view:
            length = view.nbytes
            if not 0 <= offset <= self._size - length:
                raise ValueError(
                    f"cannot write {length} bytes at offset {offset}: the memory is "
                    f"{self._size} bytes, and is never grown"
                )
            if not length:
                return 0
            # pwrite and the copy want plain bytes in order: flat, or a flat copy.
            flat = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
            # Borrowed: a close() meanwhile cannot make this write to another file.
            with flat, holder.borrow() as (fd, have, _):
                if have != READ_WRITE:
                    raise PermissionError(
                        f"cannot write to {self._name!r}: the memory is "
                        f"{'frozen' if self._froze else PROTECTION_NAMES[have]}"
                    )
                try:
                    backend.write_at(fd, flat, offset)
                except PermissionError as exc:
                    if exc.errno != errno.EPERM:
                        raise
                    # EPERM from pwrite: the seal of a memory frozen through another handle.
                    raise PermissionError(
                        exc.errno, f"cannot write to {self._name!r}: the memory is frozen"
                    ) from exc
        return length

    def read(self, n: int, offset: int = 0) -> bytes:
        """Copy ``n`` bytes from ``offset`` out of the memory, through the kernel, with no map.

        Unlike a file's ``read``, asking for bytes past the end is an error, not a
        shorter result: the memory's size is exact and fixed, so such a read is a
        mistake in the caller's arithmetic.

        Args:
            n: how many bytes, ``0 <= n <= size - offset``.
            offset: where the first byte is, ``>= 0``.

        Returns:
            Exactly ``n`` bytes.

        Raises:
            TypeError: ``n`` or ``offset`` is not an int.
            ValueError: the bytes would end past the end of the memory, ``n`` or
                ``offset`` is negative, or this handle is closed.
            OSError: the memory is shorter than its size (``EIO``: another holder
                truncated a memory whose size the kernel does not fix).

        Example:
            >>> from anonshm import AnonymousMemory
            >>> with AnonymousMemory(8) as mem:
            ...     with mem.map() as view:
            ...         view[2:4] = b"hi"
            ...     mem.read(2, offset=2), mem.read(0)
            (b'hi', b'')
        """
        holder = self._live()
        if type(n) is not int:
            n = _check_int(n, "n")
        if type(offset) is not int:
            offset = _check_int(offset, "offset")
        if n < 0 or not 0 <= offset <= self._size - n:
            raise ValueError(
                f"cannot read {n} bytes at offset {offset}: the memory is {self._size} bytes"
            )
        if not n:
            return b""
        with holder.borrow() as (fd, _, _):  # a close() meanwhile: still this memory's
            return backend.read_at(fd, n, offset)

    async def send_async(self, sock: "socket.socket") -> None:
        """:meth:`send`, awaited on the running asyncio loop, which it never blocks.

        The same message, checks and errors as :meth:`send`.  It waits (on the loop)
        while the socket's buffer is full, and the descriptor is only borrowed for each
        non-blocking attempt: a ``close()`` meanwhile makes the next one a
        ``ValueError``.  A cancel before the message went sends nothing; Linux sends a
        message this small whole or not at all.  Where a kernel takes only part of it on
        a stream socket, a cancel before the rest went shuts the socket down for
        writing (``SHUT_WR``), so that no later message is read as the end of this one:
        the peer's receive says the message was cut short, then sees the end.

        Raises:
            ValueError: the socket is not non-blocking (``sock.setblocking(False)``,
                as the loop's own ``sock_*`` calls want), or this handle is closed.
            OSError, AnonShmError: as :meth:`send`.

        Example:
            >>> import asyncio, socket
            >>> from anonshm import AnonymousMemory
            >>> async def main():
            ...     left, right = socket.socketpair()
            ...     with left, right, AnonymousMemory(8, name="frame") as mem:
            ...         left.setblocking(False); right.setblocking(False)
            ...         await mem.send_async(left)
            ...         with await AnonymousMemory.receive_async(right) as got:
            ...             return got.name, got.size
            >>> asyncio.run(main())
            ('frame', 8)
        """
        if sys.platform == "win32" or not backend.FEATURES.sockets:
            raise _no_sockets()
        from . import _aio  # noqa: PLC0415 - asyncio only for those who await

        await _aio.send(sock, self._live(), self._name, self._size)

    @classmethod
    async def receive_async(cls, sock: "socket.socket", *, allow_resizable: bool = False) -> "Self":
        """:meth:`receive`, awaited on the running asyncio loop, which it never blocks.

        It waits on the loop, consuming nothing, until a whole message is queued (or
        the peer has closed the socket, or sent garbage), then receives it at once
        with :meth:`receive`: the same checks and errors, every descriptor that
        arrived closed on error.  A cancel (``asyncio.timeout``, a task's
        ``cancel()``) lands only before anything was read: no descriptor is left open
        and a half-arrived message stays queued, whole, for the next call.  Any number
        of tasks may wait on one socket; each message goes to one of them.

        Args:
            sock: a non-blocking Unix socket (``sock.setblocking(False)``, as the loop's
                own ``sock_*`` calls want).
            allow_resizable: as :meth:`receive`.

        Raises:
            ValueError: the socket is not non-blocking.
            TokenError, EOFError, OSError, AnonShmError: as :meth:`receive`.

        Example:
            >>> import asyncio, socket
            >>> from anonshm import AnonymousMemory
            >>> async def main():
            ...     ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ...     with ours, theirs:
            ...         ours.setblocking(False); theirs.setblocking(False)
            ...         waiting = asyncio.create_task(AnonymousMemory.receive_async(theirs))
            ...         with AnonymousMemory(32, name="shared") as mem:
            ...             await mem.send_async(ours)
            ...         with await waiting as got:
            ...             return got.name, got.size
            >>> asyncio.run(main())
            ('shared', 32)
        """
        allow_resizable = _check_flag(allow_resizable, "allow_resizable")
        if sys.platform == "win32" or not backend.FEATURES.sockets:
            raise _no_sockets()
        from . import _aio  # noqa: PLC0415 - asyncio only for those who await

        await _aio.message_queued(sock)
        # No await from here on: the message is read whole before any other task runs.
        return cls.receive(sock, allow_resizable=allow_resizable)

    def __enter__(self) -> "Self":
        if self.closed:
            raise ValueError("cannot enter a closed AnonymousMemory")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            "an AnonymousMemory cannot be pickled: a descriptor number means nothing in "
            "another process.  Pass it to multiprocessing (which sends the descriptor "
            "itself), spawn(inherit=...), export() or send()"
        )

    def __repr__(self) -> str:
        holder = self._holder
        try:
            state = "closed" if holder is None else f"fd={holder.state[0]}"  # Windows: a handle
        except ValueError:
            state = "closed"
        return (
            f"<AnonymousMemory {self._name!r} size={self._size} "
            f"protection={PROTECTION_NAMES[self._protection]} {state}>"
        )


@final
class ForChild:
    """What :meth:`AnonymousMemory.for_child` returns: a ``with`` block for one child.

    Example:
        >>> from anonshm import AnonymousMemory
        >>> with AnonymousMemory(8) as mem, mem.for_child() as (token, options):
        ...     sorted(options)  # what subprocess.Popen is given (POSIX)
        ['pass_fds']
    """

    def __init__(self, memory: AnonymousMemory) -> None:
        self._memory = memory
        self._duplicate = Pending()

    def __enter__(self) -> "tuple[str, dict[str, Any]]":
        if self._duplicate:
            raise ValueError("this for_child() block is already entered")
        owned = self._duplicate
        try:
            with self._memory._live().borrow() as (fd, protection, _):
                backend.child_duplicate(owned, fd)
            options: dict[str, Any] = {}
            backend.pass_to_child(options, owned[:])
            return backend.format_token(owned[0], protection), options
        except BaseException:
            close_all(owned)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        close_all(self._duplicate)
