"""What a channel says on its notification socket, and the waits of both ends.

A channel (``_channel``) is one anonymous memory cut into ``slots`` slots, and a
connected pair of Unix stream sockets.  Every byte on the sockets, in order:

writer -> reader
    the geometry (written by :func:`~anonshm.channel` itself, before either end is
    handed anywhere); then the hello, sent by the writer's first write with the
    memory's read-only descriptor riding along (``SCM_RIGHTS``); then one record
    ``(slot, length)`` per message.
reader -> writer
    the geometry (again by ``channel()``); then the numbers of the slots the reader
    is done with (acknowledgements), in batches.

A slot changes hands only through these system calls, which order memory on every
CPU: no process ever relies on the order in which it sees another's plain stores.
Records and acknowledgements are native-endian 64-bit words: both ends run on one
machine.  Everything a peer sends is checked by the receiving end before use.
"""

import _socket
import errno
import mmap
import os
import select
import struct
import sys
from time import monotonic

assert sys.platform != "win32"  # for type checkers: POSIX only (sockets carry descriptors)

from ._errors import AnonShmError, ChannelError  # noqa: E402
from ._wire import MAX_NAME_BYTES, check_name  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import signal as _signal  # the C half's names and types, which typeshed has not
    from select import poll as Poll  # noqa: N812 - a class to type checkers; at run time a function
    from typing import Final, NoReturn
else:
    import _signal

    Poll = type(select.poll())  # the class of what select.poll() makes, for annotations

__all__ = [
    "GEOMETRY",
    "HELLO",
    "MAX_SLOTS",
    "NOSIGNAL",
    "READER",
    "RECORD",
    "WRITER",
    "Poll",
    "check_geometry",
    "geometry",
    "peek_geometry",
    "stride",
    "wait",
]

GEOMETRY: "Final" = struct.Struct("=8sQQH")  # magic, slot_size, slots, name length; name
# Which end the geometry is for: a reader's socket read as a writer's is refused.
READER: "Final" = b"anonshmR"
WRITER: "Final" = b"anonshmW"
HELLO: "Final" = struct.Struct("=8sQ")  # magic, the memory's size; its descriptor rides along
HELLO_MAGIC: "Final" = b"anonshmH"
RECORD: "Final" = struct.Struct("=QQ")  # slot, length
WORD: "Final" = 8  # an acknowledgement: a slot number
# Every record in flight fits the smallest pipe buffer (16 KiB: macOS before it grows),
# so the writer's write never waits on the pipe, and a batch of acknowledgements (half
# the slots, 4 KiB) always fits the socket: neither side can block the other.
MAX_SLOTS: "Final" = 1 << 10
_MAX_BYTES: "Final" = 1 << 46  # 64 TiB: more than any machine maps, less than off_t holds

# Never SIGPIPE: a write to a reader that is gone is EPIPE, BrokenPipeError.  Linux and
# the BSDs take MSG_NOSIGNAL per call; macOS has only the socket option SO_NOSIGPIPE.
NOSIGNAL: "Final[int]" = getattr(_socket, "MSG_NOSIGNAL", 0)
_NOSIGPIPE: "Final[int]" = getattr(
    _socket, "SO_NOSIGPIPE", 0x1022 if sys.platform == "darwin" else 0
)
DONTWAIT: "Final[int]" = _socket.MSG_DONTWAIT


def stride(slot_size: int) -> int:
    """Where slot ``i + 1`` starts after slot ``i``: the slot size in whole pages.

    Page-aligned slots keep one message from sharing a page with the next (no false
    sharing, and numpy arrays over a view start aligned).
    """
    page = mmap.ALLOCATIONGRANULARITY
    return -(-slot_size // page) * page


def check_geometry(slot_size: object, slots: object) -> tuple[int, int]:
    """``(slot_size, slots)`` as ints; TypeError or ValueError naming what is wrong."""
    for value, what in ((slot_size, "slot_size"), (slots, "slots")):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    assert isinstance(slot_size, int)
    assert isinstance(slots, int)
    if slot_size < 1:
        raise ValueError(f"slot_size must be at least 1 byte, not {slot_size}")
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots must be from 1 to {MAX_SLOTS}, not {slots}")
    if slots * stride(slot_size) > _MAX_BYTES:
        raise ValueError(
            f"{slots} slots of {slot_size} bytes are more than a channel holds ({_MAX_BYTES} bytes)"
        )
    return int(slot_size), int(slots)


def geometry(role: bytes, slot_size: int, slots: int, name: str) -> bytes:
    """The geometry message ``channel()`` writes for the end ``role`` (READER, WRITER)."""
    raw = name.encode()
    return GEOMETRY.pack(role, slot_size, slots, len(raw)) + raw


def prepare(sock: "_socket.socket") -> None:
    """Set up a channel's socket: never SIGPIPE on macOS (elsewhere: per call)."""
    if _NOSIGPIPE and not NOSIGNAL:
        sock.setsockopt(_socket.SOL_SOCKET, _NOSIGPIPE, 1)


def check_socket(sock: "_socket.socket", what: str) -> None:
    """Refuse a socket that cannot be a channel's: not a connected Unix stream socket."""
    if sock.family != _socket.AF_UNIX or sock.type != _socket.SOCK_STREAM:
        raise ChannelError(f"{what} is not a Unix stream socket, so not a channel end")


def peek_geometry(sock: "_socket.socket", role: bytes, what: str) -> tuple[int, int, str, int]:
    """``(slot_size, slots, name, length)`` of the geometry queued first on ``sock``.

    Peeked, not consumed: an end handed on before it is used leaves the geometry for
    its next holder; the end takes its ``length`` bytes when it starts (``End._start``).
    ``channel()`` wrote it before the end could go anywhere, so it is queued already:
    nothing is waited for, and a socket without it is not a channel's.
    """
    try:
        seen = sock.recv(GEOMETRY.size + MAX_NAME_BYTES, _socket.MSG_PEEK | DONTWAIT)
    except BlockingIOError:
        seen = b""
    if len(seen) < GEOMETRY.size:
        raise ChannelError(f"{what} is not a channel end, or another process used it first")
    magic, slot_size, slots, length = GEOMETRY.unpack_from(seen)
    if magic != role:
        if magic in (READER, WRITER):
            ends = {READER: "a channel's reader", WRITER: "a channel's writer"}
            raise ChannelError(f"{what} is {ends[magic]}, not {ends[role]}")
        raise ChannelError(f"{what} is not a channel end (its socket starts {magic!r})")
    end = GEOMETRY.size + length
    if not 0 < length <= MAX_NAME_BYTES or len(seen) < end:
        raise ChannelError(f"{what} has a bad geometry: a name of {length} bytes")
    try:
        name = check_name(seen[GEOMETRY.size : end].decode())
        slot_size, slots = check_geometry(slot_size, slots)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChannelError(f"{what} has a bad geometry: {exc}") from None
    return slot_size, slots, name, end


def wait(poller: "Poll", deadline: float | None, what: str) -> None:
    """Wait until ``poller`` reports its socket ready, or ``TimeoutError`` at ``deadline``.

    ``deadline`` is a ``time.monotonic()`` instant, or None (for ever).  Interrupted by a
    signal, the wait goes on (PEP 475) unless the handler raises.
    """
    if deadline is None:
        poller.poll()
        return
    left = deadline - monotonic()
    if not poller.poll(max(0, -(-left * 1000 // 1))):  # whole ms, rounded up
        raise TimeoutError(f"timed out: {what}")


def deadline(timeout: object) -> float | None:
    """The ``time.monotonic()`` instant a timeout ends at; None waits for ever."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        kind = type(timeout).__name__
        raise TypeError(f"timeout must be a number of seconds or None, not {kind}")
    if not timeout >= 0:  # also NaN
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
    return monotonic() + timeout


def poller(sock: "_socket.socket", events: int) -> "Poll":
    """A poll object watching ``sock`` for ``events`` (and its end)."""
    return poller_fd(sock.fileno(), events)


def poller_fd(fd: int, events: int) -> "Poll":
    """A poll object watching ``fd`` for ``events`` (and its end)."""
    watch = select.poll()
    watch.register(fd, events)
    return watch


def no_sigpipe(fd: int) -> None:
    """Make writes to the pipe ``fd`` never raise SIGPIPE, where the system can (macOS)."""
    if sys.platform == "darwin":
        import fcntl  # noqa: PLC0415 - loaded already: the backends use it

        fcntl.fcntl(fd, getattr(fcntl, "F_SETNOSIGPIPE", 73), 1)


def write_without_sigpipe(fd: int, data: bytes) -> None:
    """``os.write`` to a pipe in a program that does not ignore SIGPIPE.

    Python ignores SIGPIPE from its start, and a write to a pipe with no reader is
    then EPIPE; a program that restored the default would be killed instead.  So the
    signal is blocked for this thread around the write (it is sent to the writing
    thread), and the one a broken pipe raises is taken before it is unblocked.
    """
    if sys.platform == "darwin":  # F_SETNOSIGPIPE (no_sigpipe) already: no signal at all
        os.write(fd, data)
        return
    blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, [_signal.SIGPIPE])
    try:
        os.write(fd, data)
    except BrokenPipeError:
        if _signal.SIGPIPE in _signal.sigpending():
            _signal.sigtimedwait([_signal.SIGPIPE], 0)
        raise
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)


def broken(exc: OSError, what: str) -> "NoReturn":
    """Raise BrokenPipeError for a peer that is gone (EPIPE, ECONNRESET); else ``exc``."""
    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
        raise BrokenPipeError(errno.EPIPE, what) from None
    raise exc


def receive_hello(
    sock: "_socket.socket",
    deadline: float | None,
    *,
    owned: list[int],
    pending: list[int],
    got: "list[tuple[bytes, list[tuple[int, int, bytes]], int, object]]",
    what: str,
) -> int:
    """Receive the writer's first message: the memory's size.

    The records' pipe goes into ``owned`` (the reader's), the memory's descriptor into
    ``pending`` (the caller's, to check and adopt).  ``got`` (the caller's, empty)
    holds what ``recvmsg`` returned from the C call that made it: once it is not empty
    the hello is consumed.  Every other descriptor that came is closed, whatever line
    an exception lands on.  ``EOFError``: the writer closed before its first message;
    ``TimeoutError``: nothing was consumed.
    """
    from ._handoff import (  # noqa: PLC0415 - loaded by the first reader only
        _ANCILLARY_SPACE,
        _CMSG_CLOEXEC,
        _close_all,
        _collect,
        _truncated,
    )

    fds: list[int] = []
    added: list[int] = []
    collected = False
    try:
        _first_message(sock, deadline, _ANCILLARY_SPACE, _CMSG_CLOEXEC, got)
        data, ancillary, flags, _ = got[0]
        _collect(ancillary, fds, added)
        collected = True
        _close_all(added)
        if not data and not fds:
            raise EOFError(f"the writer closed the channel ({what}) before its first message")
        if flags & _socket.MSG_CTRUNC:
            try:
                _truncated(ancillary, len(fds))
            except AnonShmError as exc:
                raise ChannelError(f"{what}: {exc}") from None
        if len(fds) != 2:
            raise ChannelError(f"{what} came with {len(fds)} descriptors, not two")
        # Each into the list that owns it, inside one C call: the pipe's is the last.
        owned.extend(map(fds.pop, [-1]))
        pending.extend(map(fds.pop, [-1]))
        while len(data) < HELLO.size:  # one sendmsg: all there, or a hostile writer
            try:
                more = sock.recv(HELLO.size - len(data), DONTWAIT)
            except BlockingIOError:
                more = b""
            if not more:
                raise ChannelError(f"{what}: the writer's first message was cut short")
            data += more
        magic, size = HELLO.unpack(data)
        if magic != HELLO_MAGIC:
            raise ChannelError(f"{what}: the writer's first message starts {magic!r}")
        return int(size)
    except BaseException:
        if got and not collected:  # interrupted before they were all seen
            _collect(got[0][1], fds, added)
        _close_all(fds)
        _close_all(added)
        raise


def _first_message(
    sock: "_socket.socket",
    deadline: float | None,
    space: int,
    flags: int,
    got: "list[tuple[bytes, list[tuple[int, int, bytes]], int, object]]",
) -> None:
    """``recvmsg`` of the hello into ``got``, in the C call that makes it; the end: empty."""
    while True:
        try:
            got.extend(map(sock.recvmsg, (HELLO.size,), (space,), (flags | DONTWAIT,)))
            return
        except BlockingIOError:
            wait(poller(sock, select.POLLIN), deadline, "no message arrived")
        except ConnectionResetError:  # the writer died with acknowledgements unread
            got.append((b"", [], 0, None))
            return


class Watch:
    """One descriptor readable when any of those registered is: epoll, or kqueue.

    What a reader's ``fileno()`` gives ``select``: its socket, then its records' pipe,
    and a pipe of its own that holds a byte while records read ahead wait in the end.
    """

    def __init__(self, fd: int) -> None:
        if sys.platform == "linux":
            self._poller = select.epoll()
        else:
            self._poller = select.kqueue()
        self._flags: list[int] = []
        try:
            self._flags.extend(os.pipe())
            self._marked = False
            self.register(self._flags[0], select.POLLIN)
            self.register(fd, select.POLLIN)
        except BaseException:
            self.close()
            raise

    def register(self, fd: int, events: int) -> None:
        """Watch ``fd`` for reading too."""
        if sys.platform == "linux":
            self._poller.register(fd, select.EPOLLIN)
        else:
            event = select.kevent(fd, select.KQ_FILTER_READ, select.KQ_EV_ADD)
            self._poller.control([event], 0, 0)

    def mark(self) -> None:
        """Be readable: records wait in the end."""
        if not self._marked:
            os.write(self._flags[1], b"!")
            self._marked = True

    def clear(self) -> None:
        """Be readable only when the registered descriptors are."""
        if self._marked:
            os.read(self._flags[0], 1)
            self._marked = False

    def fileno(self) -> int:
        """The descriptor to give ``select``."""
        return self._poller.fileno()

    def close(self) -> None:
        """Close every descriptor of it."""
        self._poller.close()
        while self._flags:
            os.close(self._flags.pop())
