"""The message that carries a memory over a Unix socket (``SCM_RIGHTS``).

One message: a fixed header (magic, size, protection, name length), the UTF-8 name,
and exactly one descriptor riding along.  Receiving is strict; on any error every
descriptor that arrived is closed, so a hostile peer cannot make this process leak,
and a stream socket with a timeout (or non-blocking) gives up only before it has
consumed anything, so the stream stays whole for the next receive.

Imported on the first send or receive (a child that only maps inherited memory never
needs it), and written for the handoff's latency: one ``sendmsg`` and one ``recvmsg``
with no ``socket``-module helpers, whose enum conversions and ``array`` packing cost
more than the system calls (benchmarks/, long-lived worker).
"""

# _socket, not socket: its constants are plain ints and its getters build no enums;
# whoever holds a socket.socket has imported it already.  sys is always loaded.
import _socket
import os
import struct
import sys

assert sys.platform != "win32"  # for type checkers: POSIX only: Windows sockets carry no handles

from ._errors import TokenError  # noqa: E402
from ._wire import MAX_NAME_BYTES, check_name  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import socket
    from typing import Final, NoReturn

__all__ = ["message", "receive_fd", "send_fd"]

_HEADER: "Final" = struct.Struct("!8sQBH")
_MAGIC: "Final" = b"anonshm\x01"
_FD: "Final" = struct.Struct("i")  # one descriptor in SCM_RIGHTS: a native C int
_MAX_FDS: "Final" = 8  # room to see (and close) descriptors a hostile peer adds
_CREDENTIALS_SIZE: "Final" = struct.calcsize("3i")  # struct ucred: pid, uid, gid
# Linux >= 6.5 adds a pidfd to every message on a socket with SO_PASSPIDFD (76), after
# the descriptors; on no other system does SOL_SOCKET type 4 carry a descriptor.
_SCM_PIDFD: "Final" = 0x04 if sys.platform == "linux" else -1
# Room for the descriptors, and for what the receiving socket's own options add: the
# credentials of SO_PASSCRED (before the descriptors; socket.recv_fds leaves no room,
# and the kernel would then drop the descriptor) and the pidfd of SO_PASSPIDFD.
_ANCILLARY_SPACE: "Final" = (
    _socket.CMSG_SPACE(_MAX_FDS * _FD.size)
    + _socket.CMSG_SPACE(_CREDENTIALS_SIZE)
    + _socket.CMSG_SPACE(_FD.size)
)
_CMSG_HEADER: "Final" = _socket.CMSG_LEN(0)
# The C getters, bound once: socket.socket's own family and type make enums.
_SOCKET_TYPE: "Final" = _socket.socket.type.__get__
_SOCKET_FAMILY: "Final" = _socket.socket.family.__get__
# Linux marks received descriptors close-on-exec as they arrive; elsewhere (macOS, the
# BSDs) they are marked right after, and a child another thread forks and execs in
# between could inherit them.
_CMSG_CLOEXEC: "Final[int]" = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)


def _check_socket(sock: object, method: str) -> int:
    """Refuse anything but a Unix socket; its type (``SOCK_STREAM``, ...)."""
    if isinstance(sock, _socket.socket):
        family = _SOCKET_FAMILY(sock)
        kind = _SOCKET_TYPE(sock)
    elif hasattr(sock, method):  # what passes for one: gevent's and eventlet's wrap one
        family = sock.family  # type: ignore[attr-defined]
        kind = sock.type  # type: ignore[attr-defined]
    else:
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    if family != _socket.AF_UNIX:
        _not_unix(family)
    return int(kind)


def _not_unix(family: object) -> "NoReturn":
    # Checked before the send: another family fails (EPIPE, EDESTADDRREQ), or sends
    # the bytes and drops the descriptor without a word (TCP does, Linux 6.18).
    import errno  # noqa: PLC0415 (built in, and only on this error)
    import socket  # noqa: PLC0415 (loaded already: whoever made the socket did)

    try:
        name = socket.AddressFamily(family).name  # type: ignore[arg-type]
    except ValueError:
        name = str(family)
    raise OSError(
        errno.EAFNOSUPPORT,
        f"sock is a socket of family {name}, not AF_UNIX: a memory travels only over a Unix socket",
    )


def message(name: str, size: int, protection: int) -> bytes:
    """The handoff message that goes with a memory's descriptor."""
    raw = name.encode()
    return _HEADER.pack(_MAGIC, size, protection, len(raw)) + raw


def send_fd(sock: "socket.socket", fd: int, data: bytes) -> None:
    """Send ``data`` with ``fd`` riding along, over a connected Unix socket."""
    _check_socket(sock, "sendmsg")
    sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _FD.pack(fd))])
    if sent < len(data):  # a stream socket took only part; the descriptor went with it
        sock.sendall(data[sent:])


def receive_fd(sock: "socket.socket", pending: list[int]) -> tuple[str, int, int]:
    """Receive ``(name, size, protection)``; the memory's descriptor goes into ``pending``.

    The caller owns what is in ``pending`` (and checks it) from the line that puts it
    there; every other descriptor that arrived is closed here, on every path, whatever
    line an exception (Ctrl-C) lands on.
    """
    # A seqpacket or datagram message must be read whole in one call, or the kernel
    # drops its rest.  On a stream, Linux ends a read after the segment that carried
    # descriptors, so one call reads one message (sent by one sendmsg) and never the
    # next; what a split send left behind is read to the exact count, and any byte
    # beyond the message is an error, never silently taken.  A stream that may give up
    # (a timeout, or non-blocking) must not give up halfway through those reads: it
    # first waits, consuming nothing, until the whole message is there.
    stream = sock if _check_socket(sock, "recvmsg") == _socket.SOCK_STREAM else None
    bufsize = _HEADER.size + MAX_NAME_BYTES + (0 if stream else 1)
    if stream is not None:
        timeout = sock.gettimeout()
        if timeout is not None:  # a blocking socket waits in the reads below: no peek
            _await_whole(stream, bufsize, timeout)
    fds: list[int] = []  # the descriptors that came with the message: one is the memory's
    added: list[int] = []  # those the receiving socket's options add, closed in any case
    ancillary = None
    collected = False
    try:
        data, ancillary, flags, _ = sock.recvmsg(bufsize, _ANCILLARY_SPACE, _CMSG_CLOEXEC)
        _collect(ancillary, fds, added)
        collected = True
        if not data and not fds:
            raise EOFError("the peer closed the socket before sending a memory")
        if flags & _socket.MSG_CTRUNC:
            _truncated(ancillary, len(fds))
        if len(fds) != 1:
            raise TokenError(f"a memory comes with exactly one descriptor, not {len(fds)}")
        if flags & _socket.MSG_TRUNC:
            raise TokenError(f"the handoff message is longer than {bufsize} bytes")
        if len(data) < _HEADER.size:
            if not _MAGIC.startswith(data[: len(_MAGIC)]):  # garbage: no need to read on
                raise TokenError(f"not an anonshm handoff message (it starts {data[:8]!r})")
            data = _completed(stream, data, _HEADER.size)
        size, protection, name_length = _header(data)
        end = _HEADER.size + name_length
        if len(data) < end:
            data = _completed(stream, data, end)
        elif len(data) > end:
            raise TokenError(f"the handoff message has {len(data) - end} bytes too many")
        name = _decode_name(data[_HEADER.size :])
        _close_all(added)
        pending.append(fds.pop())  # one line: the caller's from here on
        return name, size, protection
    except BaseException:
        if ancillary is not None and not collected:  # interrupted before they were all seen
            _collect(ancillary, fds, added)
        _close_all(fds)
        _close_all(added)
        raise


def _collect(ancillary: list[tuple[int, int, bytes]], fds: list[int], added: list[int]) -> None:
    """Put every descriptor that arrived in ``fds`` (SCM_RIGHTS) or ``added`` (the rest).

    From scratch each time: called again after an interruption, it lists them all once.
    """
    fds.clear()
    added.clear()
    for level, kind, payload in ancillary:
        if level != _socket.SOL_SOCKET:
            continue
        if kind == _socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % _FD.size
            fds.extend(memoryview(payload)[:whole].cast("i"))
        elif kind == _SCM_PIDFD and len(payload) >= _FD.size:
            # A negative errno in place of a pidfd when the kernel could not make one
            # (EMFILE; ESRCH for a sender that has exited): nothing to close then.
            pidfd = _FD.unpack_from(payload)[0]
            if pidfd >= 0:
                added.append(pidfd)
    if not _CMSG_CLOEXEC:
        for fd in (*fds, *added):
            os.set_inheritable(fd, False)


def _close_all(fds: list[int]) -> None:
    """Close every descriptor in ``fds``, which ends empty."""
    while fds:
        try:
            os.close(fds.pop())  # one line: popped and closed together
        except OSError:  # EIO from a file system's flush (a hostile peer's FUSE file,
            pass  # say): Linux has freed the descriptor all the same


def _truncated(ancillary: list[tuple[int, int, bytes]], received: int) -> "NoReturn":
    """Raise the error for MSG_CTRUNC: the peer sent too many, or none could be installed."""
    # The kernel installs descriptors into the room the messages before them left (the
    # credentials) until the room, or this process's descriptor table, is full.
    before = sum(
        _socket.CMSG_SPACE(len(payload))
        for level, kind, payload in ancillary
        if level != _socket.SOL_SOCKET or kind not in (_socket.SCM_RIGHTS, _SCM_PIDFD)
    )
    room = (_ANCILLARY_SPACE - before - _CMSG_HEADER) // _FD.size
    if received >= room:
        raise TokenError(f"the peer sent {room} or more descriptors with one memory, not one")
    import errno  # noqa: PLC0415 (built in: no file to open, when none can be)

    limit = os.sysconf("SC_OPEN_MAX")  # the soft RLIMIT_NOFILE, read with no import
    raise OSError(
        errno.EMFILE,
        "a memory arrived but its descriptor could not be installed: this process's "
        f"descriptor table is full (RLIMIT_NOFILE={limit}); the memory was dropped",
    )


def _header(data: bytes) -> tuple[int, int, int]:
    """``(size, protection, name_length)`` of a message's header; TokenError if bad."""
    magic, size, protection, name_length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise TokenError(f"not an anonshm handoff message (it starts {magic!r})")
    if protection > 2:
        raise TokenError(f"the handoff message has protection {protection}, not 0, 1 or 2")
    if not 0 < name_length <= MAX_NAME_BYTES:
        raise TokenError(f"the handoff message announces a name of {name_length} bytes")
    return size, protection, name_length


def _completed(stream: "socket.socket | None", data: bytes, count: int) -> bytes:
    """``data`` read on to exactly ``count`` bytes from a stream; TokenError if it ends first."""
    chunks = [data]
    have = len(data)
    while have < count and stream is not None:
        chunk = stream.recv(count - have)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    if have < count:
        raise TokenError("the handoff message was cut short")
    return b"".join(chunks)


def _decode_name(raw: bytes) -> str:
    try:
        return check_name(raw.decode())
    except ValueError as exc:
        raise TokenError(f"the handoff message carries a bad name {raw!r}: {exc}") from None


def _whole(seen: bytes, bufsize: int) -> bool:
    """Whether ``seen``, the start of a stream, holds a whole message or can never be one."""
    if len(seen) >= bufsize:
        return True
    if len(seen) < _HEADER.size:
        return not _MAGIC.startswith(seen[: len(_MAGIC)])
    try:
        name_length = _header(seen)[2]
    except TokenError:
        return True  # garbage: receive_fd reads it and says what is wrong
    return len(seen) >= _HEADER.size + name_length


def _await_whole(stream: "socket.socket", bufsize: int, timeout: float) -> None:
    """Return once a whole message is queued on ``stream`` (or the peer has closed it).

    Consumes nothing, so that a ``TimeoutError`` (``BlockingIOError`` when
    non-blocking) leaves the stream as it was.  A peek with no ancillary buffer makes
    the kernel install no descriptor (with one, Linux installs them on every peek).
    """
    seen = stream.recv(bufsize, _socket.MSG_PEEK)  # waits as the socket's timeout says
    if not seen or _whole(seen, bufsize):
        return  # the common case: the message came in one segment
    _await_rest(stream, seen, bufsize, timeout)


def _await_rest(stream: "socket.socket", seen: bytes, bufsize: int, timeout: float) -> None:
    """Wait, within ``timeout``, for a message whose first ``seen`` bytes have arrived."""
    if sys.platform != "linux":
        _await_rest_polling(stream, bufsize, timeout)
        return
    # Only after a peer split its message: imports and system calls the common case skips.
    import errno  # noqa: PLC0415
    import fcntl  # noqa: PLC0415
    import select  # noqa: PLC0415
    import termios  # noqa: PLC0415
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    fd = stream.fileno()

    def queued() -> int:  # every byte queued, past any segment boundary
        return int(_FD.unpack(fcntl.ioctl(fd, termios.FIONREAD, bytes(_FD.size)))[0])

    # Edge-triggered: each wait ends on new data or the peer's end, not on what has
    # been queued all along (a Unix socket's poll ignores SO_RCVLOWAT).
    with select.epoll(1) as poller:
        poller.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        ended = False
        wait = 0.0  # the first poll reports at once what the socket is like now
        while True:
            for _, events in poller.poll(wait):
                ended = ended or bool(events & (select.EPOLLRDHUP | select.EPOLLHUP))
            # Only a peek that will find bytes: on EAGAIN, a socket with a timeout
            # retries at once until the timeout, spinning.
            while queued() > len(seen):
                more = _peek_beyond(stream, len(seen), bufsize - len(seen))
                seen += more
                if not more or _whole(seen, bufsize):
                    return
            if ended:
                return  # nothing more can come: receive_fd reads what there is and says so
            if timeout == 0:
                raise BlockingIOError(
                    errno.EAGAIN, "only part of a handoff message has arrived (none consumed)"
                )
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("timed out waiting for the rest of a handoff message")


def _await_rest_polling(stream: "socket.socket", bufsize: int, timeout: float) -> None:
    """Without epoll and SO_PEEK_OFF (macOS, the BSDs): peek the whole again, until whole."""
    import errno  # noqa: PLC0415
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        seen = stream.recv(bufsize, _socket.MSG_PEEK)
        if not seen or _whole(seen, bufsize):
            return
        if timeout == 0:
            raise BlockingIOError(
                errno.EAGAIN, "only part of a handoff message has arrived (none consumed)"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out waiting for the rest of a handoff message")
        time.sleep(0.001)  # the queued part keeps the socket readable: no wait to rely on


def _peek_beyond(stream: "socket.socket", offset: int, size: int) -> bytes:
    """Up to ``size`` queued bytes from ``offset`` on, peeked: none consumed, none waited for."""
    # A peek from the start stops after the segment that carried descriptors (the
    # message's first), so look past it with a peek offset, then put the option back.
    option = getattr(_socket, "SO_PEEK_OFF", 42)  # Linux's value, if _socket lacks it
    previous = stream.getsockopt(_socket.SOL_SOCKET, option)
    stream.setsockopt(_socket.SOL_SOCKET, option, offset)
    try:
        return stream.recv(size, _socket.MSG_PEEK)
    finally:
        stream.setsockopt(_socket.SOL_SOCKET, option, previous)
