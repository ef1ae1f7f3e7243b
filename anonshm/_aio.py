"""asyncio: waiting for a descriptor on the running loop, and the handoff over it.

Imported by the first ``send_async`` or ``receive_async`` (``import anonshm`` never
loads asyncio).  Nothing here uses a thread, and nothing blocks the loop: a system call
is made only once the loop has said it will not wait, or with ``MSG_DONTWAIT``.

:func:`readable` and :func:`writable` are the loop's side of every async call: any
number of tasks may wait for the same descriptor at once (asyncio keeps one callback
per descriptor, and a second ``add_reader`` silently drops the first: here one callback
wakes every waiter, and each tries its call again).  They are level-triggered and
consume nothing; a cancelled wait leaves nothing registered.

A handoff is received only once the whole message is queued (peeked, consuming
nothing), then in one go by the blocking ``receive()``, whose reads then never wait:
so the checks and errors are the blocking call's own, and a cancel can only land
before anything was consumed.  A half-arrived message stays queued for the next call.
"""

import asyncio
import sys

assert sys.platform != "win32"  # for type checkers: Windows sockets carry no handles

import _socket  # noqa: E402

from . import _handoff  # noqa: E402
from ._wire import MAX_NAME_BYTES  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import socket
    from typing import Final, Protocol

    from ._holder import Holder

    class HasFileno(Protocol):
        """A socket, a pipe's file object: anything with a descriptor."""

        def fileno(self) -> int:
            """The descriptor."""


__all__ = ["message_queued", "readable", "send", "writable"]

_DONTWAIT: "Final" = _socket.MSG_DONTWAIT
_PEEK: "Final" = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
# A whole message at most (_handoff's bufsize for a stream): what the peeks look at.
_STREAM_BUFSIZE: "Final" = _handoff._HEADER.size + MAX_NAME_BYTES

# Who waits for what: (loop, fd, writing) -> the futures of every waiting task.
_waiting: "dict[tuple[asyncio.AbstractEventLoop, int, bool], list[asyncio.Future[None]]]" = {}


def _wake(key: "tuple[asyncio.AbstractEventLoop, int, bool]") -> None:
    # The loop's callback: wake every waiter, and unregister until someone waits again.
    loop, fd, writing = key
    waiters = _waiting.pop(key, [])
    if writing:
        loop.remove_writer(fd)
    else:
        loop.remove_reader(fd)
    for future in waiters:
        if not future.done():
            future.set_result(None)


async def _wait(fileobj: "int | HasFileno", writing: bool) -> None:
    loop = asyncio.get_running_loop()
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    key = (loop, fd, writing)
    waiters = _waiting.get(key)
    if waiters is None:
        waiters = []
        if writing:
            loop.add_writer(fd, _wake, key)  # raises for a closed fd: nothing registered
        else:
            loop.add_reader(fd, _wake, key)
        _waiting[key] = waiters
    future: asyncio.Future[None] = loop.create_future()
    waiters.append(future)
    try:
        await future
    except BaseException:
        # Cancelled (the future is then cancelled too): unless a wake came first and
        # took the list, leave it, and the last waiter to leave unregisters.  A loop
        # left watching a descriptor closed later would fail on its number's next user.
        if _waiting.get(key) is waiters:
            waiters.remove(future)
            if not waiters:
                _wake(key)
        raise


async def readable(fileobj: "int | HasFileno") -> None:
    """Return once ``fileobj`` (a descriptor, or anything with ``fileno()``) is readable.

    Level-triggered (it returns at once while unread data is queued) and it consumes
    nothing: the caller then makes its non-blocking call, and waits again on
    ``EAGAIN`` (another waiter may have taken what woke both).  Any number of tasks
    may wait for one descriptor; don't also give that descriptor to ``add_reader``
    or the loop's ``sock_*`` calls meanwhile.  A descriptor closed while a task
    waits leaves it waiting, as asyncio's own calls do: cancel it.

    Example:
        >>> import asyncio, os
        >>> async def main():
        ...     r, w = os.pipe()
        ...     os.write(w, b"x")
        ...     await readable(r)
        ...     data = os.read(r, 1)
        ...     os.close(r); os.close(w)
        ...     return data
        >>> asyncio.run(main())
        b'x'
    """
    await _wait(fileobj, False)


async def writable(fileobj: "int | HasFileno") -> None:
    """Return once ``fileobj`` is writable; otherwise as :func:`readable`."""
    await _wait(fileobj, True)


def _check_socket(sock: object, method: str) -> int:
    """``_handoff``'s checks, and one more: the socket must be non-blocking."""
    kind = _handoff._check_socket(sock, method)
    timeout = sock.gettimeout()  # type: ignore[attr-defined]  # a socket: checked above
    if timeout != 0:
        # A blocking socket would stop the loop in whatever read or write the kernel
        # cannot finish at once (a hostile peer's message that ends too soon); one with
        # a timeout too, and CPython polls it before every call, even with MSG_DONTWAIT.
        how = "is blocking" if timeout is None else f"has a timeout ({timeout} s)"
        raise ValueError(
            f"sock {how}: the async calls need a non-blocking socket "
            "(sock.setblocking(False)), as the loop's own sock_* calls do"
        )
    return kind


async def send(sock: "socket.socket", holder: "Holder", name: str, size: int) -> None:
    """``send_fd`` on the running loop, for the memory whose descriptor ``holder`` has.

    The descriptor is borrowed only for each ``sendmsg`` attempt, which never waits, so
    a ``close()`` meanwhile is never held up, and a retry after it is a ValueError.
    """
    _check_socket(sock, "sendmsg")
    while True:
        with holder.borrow() as (fd, protection, _):  # the message names this very one
            data = _handoff.message(name, size, protection)
            rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _handoff._FD.pack(fd))]
            try:
                sent = sock.sendmsg([data], rights, _DONTWAIT)
            except BlockingIOError:
                sent = -1
        if sent >= 0:
            break
        await writable(sock)
    if sent == len(data):
        return
    # A stream took only part of the message (and the descriptor with it): the rest
    # must follow, or the stream is out of step for good.  Linux sends a message this
    # small all or nothing, so this is for other kernels.
    rest = memoryview(data)[sent:]
    try:
        while rest:
            try:
                rest = rest[sock.send(rest, _DONTWAIT) :]
            except BlockingIOError:
                await writable(sock)
    except BaseException:
        # Cancelled (or failed) half-way: end the stream rather than let the next
        # message splice onto this one.  The peer's receive says "cut short" and
        # closes the descriptor that came; then it sees the end of the stream.
        try:
            sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass  # ENOTCONN: the peer went already
        raise


async def message_queued(sock: "socket.socket") -> None:
    """Return once ``receive_fd`` can read a whole message from ``sock`` without waiting.

    Or once it can fail without waiting: garbage, the peer's end, an error.  Consumes
    nothing, so a cancel leaves the socket as it was.
    """
    stream = _check_socket(sock, "recvmsg") == _socket.SOCK_STREAM
    while True:
        try:
            seen = sock.recv(_STREAM_BUFSIZE, _PEEK)  # no ancillary room: installs no fd
        except BlockingIOError:
            await readable(sock)
            continue
        # A seqpacket or datagram socket queues messages whole; and on a stream, the
        # common case: the message came in one segment.
        if not stream or not seen or _handoff._whole(seen, _STREAM_BUFSIZE):
            return
        # Part of a message: the queued part keeps the socket readable, so waiting for
        # the rest needs to hear of new data, not of data (see _await_rest).
        if await _rest_queued(sock):
            return


if sys.platform == "linux":
    import fcntl
    import select
    import termios

    async def _rest_queued(stream: "socket.socket") -> bool:
        """Wait until the message begun on ``stream`` is whole, or the peer ended.

        False if the message went meanwhile (another task received it): start again.
        """
        fd = stream.fileno()
        # Edge-triggered: its descriptor turns readable on new data or the peer's end,
        # not on what has been queued all along; the loop waits for it.
        with select.epoll(1) as poller:
            poller.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
            ended = False
            while True:
                # The first poll reports what the socket is like now; later ones, news.
                for _, events in poller.poll(0):
                    ended = ended or bool(events & (select.EPOLLRDHUP | select.EPOLLHUP))
                try:
                    seen = stream.recv(_STREAM_BUFSIZE, _PEEK)
                except BlockingIOError:
                    return False
                if not seen or _handoff._whole(seen, _STREAM_BUFSIZE):
                    return True
                # A peek from the start stops after the segment that carried the
                # descriptor: look past it for what else is queued.
                while _queued(fd) > len(seen):
                    more = _handoff._peek_beyond(stream, len(seen), _STREAM_BUFSIZE - len(seen))
                    seen += more
                    if not more or _handoff._whole(seen, _STREAM_BUFSIZE):
                        return True
                if ended:
                    return True  # nothing more can come: receive() reads it and says so
                await readable(poller)

    def _queued(fd: int) -> int:
        """Every byte queued on ``fd``, past any segment boundary."""
        raw = fcntl.ioctl(fd, termios.FIONREAD, bytes(_handoff._FD.size))
        return int(_handoff._FD.unpack(raw)[0])

else:

    async def _rest_queued(stream: "socket.socket") -> bool:
        """Without epoll and SO_PEEK_OFF (macOS, the BSDs): peek the whole again, until whole."""
        while True:
            await asyncio.sleep(0.001)  # the queued part keeps the socket readable
            try:
                seen = stream.recv(_STREAM_BUFSIZE, _PEEK)
            except BlockingIOError:
                return False
            if not seen or _handoff._whole(seen, _STREAM_BUFSIZE):
                return True
