"""The message that carries a memory over a Unix socket (``SCM_RIGHTS``).

One message: a fixed header (magic, size, protection, name length), the UTF-8 name,
and exactly one descriptor riding along.  Receiving is strict; on any error every
descriptor that arrived is closed, so a hostile peer cannot make this process leak.
"""

from __future__ import annotations

# _socket's constants are plain ints: `int & socket.MSG_TRUNC` goes through enum.Flag
# at about 1.5 us a test, and importing socket itself is deferred (see below).
import _socket
import os
import struct

from ._errors import TokenError
from ._wire import MAX_NAME_BYTES, check_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Final

__all__ = ["receive_fd", "send_fd"]

_HEADER: Final = struct.Struct("!8sQBH")
_MAGIC: Final = b"anonshm\x01"
_MAX_FDS: Final = 8  # room to see (and close) descriptors a hostile peer adds
_FD_SIZE: Final = struct.calcsize("i")
_CREDENTIALS_SIZE: Final = struct.calcsize("3i")  # struct ucred: pid, uid, gid
_ANCILLARY_SPACE: Final = _socket.CMSG_SPACE(_MAX_FDS * _FD_SIZE) + _socket.CMSG_SPACE(
    _CREDENTIALS_SIZE
)


def send_fd(sock: socket.socket, fd: int, name: str, size: int, protection: int) -> None:
    """Send one memory's descriptor and description over a connected Unix socket."""
    import socket  # noqa: PLC0415 - 2 ms of import that a child mapping memory never needs

    raw = name.encode()
    message = _HEADER.pack(_MAGIC, size, protection, len(raw)) + raw
    sent = socket.send_fds(sock, [message], [fd])
    if sent < len(message):
        sock.sendall(message[sent:])


def receive_fd(sock: socket.socket) -> tuple[int, str, int, int]:
    """Receive ``(fd, name, size, protection)``; the caller owns ``fd`` and checks it."""
    # A seqpacket or datagram message must be read whole in one call, or the kernel
    # drops its rest.  On a stream, Linux ends a read after the segment that carried
    # descriptors, so one call reads one message (sent by one sendmsg) and never the
    # next; what a split send left behind is read to the exact count, and any byte
    # beyond the message is an error (finish()), never silently taken.
    stream = sock.type == _socket.SOCK_STREAM
    bufsize = _HEADER.size + MAX_NAME_BYTES + (0 if stream else 1)
    # Room for the descriptors and for the credentials a SO_PASSCRED socket adds, which
    # socket.recv_fds leaves none for (the kernel would then drop the descriptor).
    data, ancillary, flags, _ = sock.recvmsg(bufsize, _ANCILLARY_SPACE, _socket.MSG_CMSG_CLOEXEC)
    fds = _descriptors(ancillary)
    try:
        if not data and not fds:
            raise EOFError("the peer closed the socket before sending a memory")
        if flags & _socket.MSG_CTRUNC:
            raise TokenError(f"the peer sent more than {_MAX_FDS} descriptors with one memory")
        if len(fds) != 1:
            raise TokenError(f"a memory comes with exactly one descriptor, not {len(fds)}")
        if flags & _socket.MSG_TRUNC:
            raise TokenError(f"the handoff message is longer than {bufsize} bytes")
        message = _Message(sock if stream else None, data)
        magic, size, protection, name_length = _HEADER.unpack(message.take(_HEADER.size))
        if magic != _MAGIC:
            raise TokenError(f"not an anonshm handoff message (it starts {magic!r})")
        if protection not in (0, 1, 2):
            raise TokenError(f"the handoff message has protection {protection}, not 0, 1 or 2")
        if not 0 < name_length <= MAX_NAME_BYTES:
            raise TokenError(f"the handoff message announces a name of {name_length} bytes")
        name = _decode_name(message.take(name_length))
        message.finish()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], name, size, protection


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            count = len(payload) // _FD_SIZE
            fds.extend(struct.unpack(f"{count}i", payload[: count * _FD_SIZE]))
    return fds


class _Message:
    """The bytes of one handoff message: what arrived, and on a stream what follows."""

    def __init__(self, stream: socket.socket | None, data: bytes) -> None:
        self._stream = stream
        self._pending = bytearray(data)

    def take(self, count: int) -> bytes:
        while len(self._pending) < count and self._stream is not None:
            chunk = self._stream.recv(count - len(self._pending))
            if not chunk:
                break
            self._pending += chunk
        if len(self._pending) < count:
            raise TokenError("the handoff message was cut short")
        taken = bytes(self._pending[:count])
        del self._pending[:count]
        return taken

    def finish(self) -> None:
        if self._pending:
            raise TokenError(f"the handoff message has {len(self._pending)} bytes too many")


def _decode_name(raw: bytes) -> str:
    try:
        return check_name(raw.decode())
    except ValueError as exc:
        raise TokenError(f"the handoff message carries a bad name {raw!r}: {exc}") from None
