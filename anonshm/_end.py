"""What both ends of a channel share: the socket, the geometry, closing, handing on."""

import _socket
import errno
import os
import stat
import sys
from _warnings import warn  # warnings.warn, without importing warnings.py

assert sys.platform != "win32"  # for type checkers: POSIX only (see _channel)

from . import _stream, _unix  # noqa: E402
from ._backend import backend  # noqa: E402
from ._errors import ChannelError, InheritError  # noqa: E402
from ._hints import join as _join  # noqa: E402
from ._holder import Pending, close_all  # noqa: E402
from ._memory import DEFAULT_NAME  # noqa: E402
from ._net import forget, watch  # noqa: E402
from ._wire import (  # noqa: E402
    INHERIT_VARIABLE,
    PR_DESC_SOCKET_TCP,
    check_name,
    parse_inherit_fds,
)

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import mmap
    import socket
    from _weakref import ref
    from collections.abc import Callable
    from types import TracebackType
    from typing import Protocol, Self, TypeVar

    class _DupFd(Protocol):
        def detach(self) -> int: ...

    R = TypeVar("R", bound="End")
    W = TypeVar("W", bound="End")

_join(globals(), "Callable", "Self", "TracebackType", "mmap", "ref", "socket")

__all__ = ["KINDS", "End", "check_pipe", "join", "pair", "reduce"]


class End:
    """What both ends share: the socket, its geometry, closing, handing on."""

    # Defaults: close() and repr() work on an object whose set-up failed.
    _sock: "_socket.socket | None" = None
    _started: bool = False  # the geometry is consumed: this end can go nowhere else
    _broken: BaseException | None = None  # a peer that broke the protocol: for good
    _mm: "mmap.mmap | None" = None
    _whole: memoryview | None = None
    _slot_size: int = 0
    _slots: int = 0
    _stride: int = 0
    _name: str = DEFAULT_NAME
    _skip: int = 0  # the geometry's length, consumed when the end starts
    _poller: "_stream.Poll | None" = None
    _ref: "ref[object] | None" = None  # the safety net (_net)
    _pipe: int = -1  # the records' pipe: the writer's end of it, or the reader's
    _taken: "list[int]"  # the lengths of the geometry's chunks consumed so far (_start)
    _owned: "list[int]" = []  # noqa: RUF012 - replaced by a Pending of its own; owns _pipe
    _kind = "channel end"
    _role = b""  # the geometry's magic for this kind of end (_stream.READER, WRITER)

    def __init__(self) -> None:
        raise TypeError(
            f"{type(self).__name__} is made by channel(), {type(self).__name__}.inherited(), "
            "receive() or multiprocessing"
        )

    @classmethod
    def _own(cls, sock: "_socket.socket", what: str) -> "Self":
        """A new end owning ``sock`` (closed by the caller if this raises)."""
        _stream.check_socket(sock, what)
        slot_size, slots, name, length = _stream.peek_geometry(sock, cls._role, what)
        _stream.prepare(sock)
        self = cls.__new__(cls)
        self._slot_size = slot_size
        self._slots = slots
        self._stride = _stream.stride(slot_size)
        self._name = name
        self._skip = length
        self._taken = []
        self._owned = Pending()
        self._fresh()
        self._sock = sock
        self._ref = watch(self, _unclosed, type(self).__name__, name, sock)
        return self

    def _fresh(self) -> None:
        """Set up the state of an end that has not started."""

    @classmethod
    def _adopt_fd(cls, pending: list[int], what: str) -> "Self":
        """A new end owning the socket ``pending[-1]`` (the caller's ``finally`` closes it else)."""
        fd = pending[-1]
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ChannelError(f"{what} is not a Unix stream socket, so not a channel end")
        # One C call makes the socket object that owns the descriptor, and takes the
        # descriptor out of `pending`: no line between where it would be owned twice.
        owners: list[_socket.socket] = []
        owners.extend(
            map(
                _socket.socket,
                [_socket.AF_UNIX],
                [_socket.SOCK_STREAM],
                [0],
                map(pending.pop, [-1]),
            )
        )
        try:
            return cls._own(owners[0], what)
        except BaseException:
            owners[0].close()
            raise

    @classmethod
    def inherited(cls, name: str = DEFAULT_NAME) -> "Self":
        """The end a parent passed under ``name`` (NSPR's first protocol, as memories).

        Looks ``name`` up in ``NSPR_INHERIT_FDS`` (an entry of type 2, a stream
        socket); the inherited descriptor itself is never closed: the end owns a
        duplicate.

        Raises:
            InheritError: no such entry, or the variable is malformed.
            ChannelError: the entry is no end of a channel of this kind.

        Example:
            >>> from anonshm import ChannelReader
            >>> with ChannelReader.inherited("frames") as reader:  # doctest: +SKIP
            ...     for message in reader:
            ...         print(len(message))
        """
        check_name(name)
        value = os.environ.get(INHERIT_VARIABLE)
        if value is None:
            raise InheritError(
                f"no channel end {name!r} was inherited: {INHERIT_VARIABLE} is not set"
            )
        entries = parse_inherit_fds(value)
        try:
            kind, fd = entries[name]
        except KeyError:
            raise InheritError(
                f"no channel end {name!r} was inherited: {INHERIT_VARIABLE} names only "
                f"{', '.join(map(repr, entries))}"
            ) from None
        what = f"inherited {name!r} (fd {fd})"
        if kind != PR_DESC_SOCKET_TCP:
            raise InheritError(f"{what} has descriptor type {kind}, not a socket (2)")
        pending = Pending()
        try:
            try:
                backend.duplicate(pending, fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                raise InheritError(f"{what} is not open in this process") from None
            return cls._adopt_fd(pending, what)
        finally:
            close_all(pending)

    @property
    def name(self) -> str:
        """The channel's label (its memory's name, and the key for inheritance)."""
        return self._name

    @property
    def slot_size(self) -> int:
        """The largest message, in bytes."""
        return self._slot_size

    @property
    def slots(self) -> int:
        """How many messages may be in flight at once."""
        return self._slots

    @property
    def closed(self) -> bool:
        """Whether this end is closed."""
        return self._sock is None

    def fileno(self) -> int:
        """The notification socket's descriptor (readable when a message or the end is due)."""
        return self._live().fileno()

    def _live(self) -> "_socket.socket":
        sock = self._sock
        if sock is None:
            raise ValueError(f"I/O operation on a closed {type(self).__name__}")
        broken = self._broken
        if broken is not None:
            raise broken
        return sock

    def _start(self) -> "_socket.socket":
        """The socket, with the geometry taken off it: from now on the end stays here."""
        sock = self._live()
        self._started = True  # first: a failure below must not let it be handed on
        taken = self._taken  # each chunk's length, stored in the same C call as it is read
        while (left := self._skip - sum(taken)) > 0:
            try:
                taken.extend(map(len, map(sock.recv, (left,), (_stream.DONTWAIT,))))
            except BlockingIOError:
                taken.append(0)
            if not taken[-1]:
                raise self._break(
                    ChannelError(
                        f"{self._kind} {self._name!r}: another process took this end's "
                        "geometry first (an end is used by one process)"
                    )
                )
        return sock

    def _handoff_fd(self, pending: list[int]) -> None:
        """Append a duplicate of the socket for one child (spawn), as memories do."""
        backend.child_duplicate(pending, self._handed().fileno())

    def _handed(self) -> "_socket.socket":
        sock = self._live()
        if self._started:
            raise ValueError(
                f"{self!r} has been used, so it cannot be handed on: hand an end on "
                "before its first read or write"
            )
        return sock

    def send(self, sock: "socket.socket") -> None:
        """Hand this end to the process at the other end of a Unix socket.

        The receiver calls ``receive`` of the same class.  This end stays open here:
        close it once it is sent (the peer sees the stream end only when every copy
        is closed).  Like every handoff, only before this end's first use.

        Raises:
            ValueError: this end is closed, or has been used.
            OSError: ``sock`` is not a connected Unix socket (``EAFNOSUPPORT``).
        """
        from . import _handoff  # noqa: PLC0415 - the first send or receive loads it

        fd = self._handed().fileno()
        _handoff.send_fd(sock, fd, _handoff.message(self._name, 0, 0))

    @classmethod
    def receive(cls, sock: "socket.socket") -> "Self":
        """Receive an end of this class that a peer sent with ``send()``.

        Raises:
            ChannelError: what arrived is no end of this kind (a memory, the other
                end of a channel, garbage); every descriptor that came is closed.
            EOFError: the peer closed the socket before sending anything.
            TokenError: the message was malformed (as for memories).
        """
        from . import _handoff  # noqa: PLC0415

        pending = Pending()
        try:
            name = _handoff.receive_fd(sock, pending)[0]
            return cls._adopt_fd(pending, f"{cls._kind} {name!r} received")
        finally:
            close_all(pending)

    def _break(self, exc: BaseException) -> "BaseException":
        self._broken = exc
        return exc

    def close(self) -> None:
        """Close this end; again does nothing.

        The peer sees the end of the stream (``EOFError`` once drained) or a broken
        pipe once every copy of this end is closed.  Views of messages still alive
        keep their pages mapped until they go; nothing is unmapped under them.
        """
        if self._ref is not None:  # first: interrupted after it, close() again finishes
            forget(self._ref)
            self._ref = None
        self._closing()
        sock, mm, whole = self._sock, self._mm, self._whole
        self._sock = self._mm = self._whole = None
        self._pipe = -1  # first: the number may be another descriptor's a moment later
        self._poller = None
        try:
            close_all(self._owned)
            if sock is not None:
                sock.close()
        finally:
            if mm is not None and whole is not None:
                _unix.unmap(mm, whole)

    def _closing(self) -> None:
        """Let go of the views whose last user is gone (they hold the map), before it goes."""

    def __enter__(self) -> "Self":
        if self._sock is None:
            raise ValueError(f"cannot enter a closed {type(self).__name__}")
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
            f"a {type(self).__name__} cannot be pickled: its socket means nothing in another "
            "process.  Pass it to multiprocessing (which sends the descriptor itself), "
            "spawn(inherit=...) or send()"
        )

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else ("started" if self._started else "new")
        return (
            f"<{type(self).__name__} {self._name!r} slot_size={self._slot_size} "
            f"slots={self._slots} {state}>"
        )


def _unclosed(
    kind: str, name: str, sock: "_socket.socket", _warn: "Callable[..., None]" = warn
) -> None:
    # Holds the socket, not the end: closed here, so that it does not warn again.  The
    # default argument keeps warn reachable while the interpreter shuts down.
    sock.close()
    _warn(f"unclosed {kind} {name!r}", ResourceWarning, stacklevel=1)


def check_pipe(fd: int, what: str) -> None:
    """Refuse a records' descriptor that is not the read end of a pipe."""
    import fcntl  # noqa: PLC0415 - loaded already: the backends use it

    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        raise ChannelError(f"{what}: the writer sent no pipe for its records")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        raise ChannelError(f"{what}: the records' pipe is not open read-only")


# The classes of ends, for multiprocessing's pickler; registered with it when both are
# loaded, whichever comes first (``_multiprocessing.register`` does the other order).
KINDS: "list[type[End]]" = []


_PICKLERS = (  # those that register a reducer per type, as multiprocessing's does
    "multiprocessing.reduction",
    "loky.backend.reduction",
    "joblib.externals.loky.backend.reduction",
)


def join(kind: "type[End]") -> None:
    """Make multiprocessing, loky and joblib send ends of ``kind`` (_reader, _writer).

    Those loaded already learn it now; those loaded later, when they load
    (``_multiprocessing.register``, ``_loky``).
    """
    KINDS.append(kind)
    for name in _PICKLERS:
        module = sys.modules.get(name)
        if module is not None:
            module.register(kind, reduce)
    loky = sys.modules.get(f"{__package__}._loky")
    if loky is not None:  # joblib's pool pickler reads this table each time it is made
        loky.REDUCERS[kind] = reduce


def reduce(end: End) -> "tuple[Callable[..., End], tuple[object, ...]]":
    """How multiprocessing pickles an end: its socket travels as a DupFd."""
    from ._multiprocessing import _duplicate  # noqa: PLC0415 - loaded: it is pickling us

    try:
        fd = end._handed().fileno()
    except ValueError as exc:
        raise ValueError(
            f"multiprocessing cannot send {end!r}: {exc} (keep it open and unused until "
            "the worker has it)"
        ) from None
    return _rebuild, (type(end), _duplicate(fd, 0), end.name)


def _rebuild(kind: "type[End]", dup: "_DupFd", name: str) -> End:
    pending = Pending()
    try:
        pending.append(dup.detach())
        os.set_inheritable(pending[-1], False)
        return kind._adopt_fd(pending, f"{kind._kind} {name!r} from multiprocessing")
    finally:
        close_all(pending)


def pair(
    reader: "type[R]", writer: "type[W]", slot_size: object, slots: object, name: object
) -> "tuple[R, W]":
    """Both ends of a new channel (``channel()``, which has checked the platform)."""
    slot_size, slots = _stream.check_geometry(slot_size, slots)
    name = check_name(name)
    left, right = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        # Both directions start with the geometry, so that an end handed to another
        # process learns it from its own socket (peeked there; see _stream).
        right.sendall(_stream.geometry(_stream.READER, slot_size, slots, name))
        left.sendall(_stream.geometry(_stream.WRITER, slot_size, slots, name))
        return reader._own(left, "channel reader"), writer._own(right, "channel writer")
    except BaseException:
        left.close()
        right.close()
        raise
