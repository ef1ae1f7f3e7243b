"""The message that carries a memory over a Unix socket (``SCM_RIGHTS``).

One message: a fixed header (magic, size, protection, name length), the UTF-8 name,
and exactly one descriptor riding along.  Receiving is strict; on any error every
descriptor that arrived is closed, so a hostile peer cannot make this process leak.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Final

from ._errors import TokenError
from ._protection import Protection
from ._wire import MAX_NAME_BYTES, check_name

__all__ = ["receive_fd", "send_fd"]

_HEADER: Final = struct.Struct("!8sQBH")
_MAGIC: Final = b"anonshm\x01"
_MAX_FDS: Final = 8  # room to see (and close) descriptors a hostile peer adds


def send_fd(sock: socket.socket, fd: int, name: str, size: int, protection: Protection) -> None:
    """Send one memory's descriptor and description over a connected Unix socket."""
    raw = name.encode()
    message = _HEADER.pack(_MAGIC, size, protection.value, len(raw)) + raw
    sent = socket.send_fds(sock, [message], [fd])
    if sent < len(message):
        sock.sendall(message[sent:])


def receive_fd(sock: socket.socket) -> tuple[int, str, int, Protection]:
    """Receive ``(fd, name, size, protection)``; the caller owns ``fd`` and checks it."""
    data, fds, flags, _ = socket.recv_fds(sock, _HEADER.size, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    try:
        if not data and not fds:
            raise EOFError("the peer closed the socket before sending a memory")
        if flags & socket.MSG_CTRUNC:
            raise TokenError(f"the peer sent more than {_MAX_FDS} descriptors with one memory")
        if len(fds) != 1:
            raise TokenError(f"a memory comes with exactly one descriptor, not {len(fds)}")
        data += _receive_exactly(sock, _HEADER.size - len(data))
        magic, size, protection, name_length = _HEADER.unpack(data)
        if magic != _MAGIC:
            raise TokenError(f"not an anonshm handoff message (it starts {magic!r})")
        if protection not in (0, 1, 2):
            raise TokenError(f"the handoff message has protection {protection}, not 0, 1 or 2")
        if not 0 < name_length <= MAX_NAME_BYTES:
            raise TokenError(f"the handoff message announces a name of {name_length} bytes")
        raw = _receive_exactly(sock, name_length)
        try:
            name = check_name(raw.decode())
        except ValueError as exc:
            raise TokenError(f"the handoff message carries a bad name {raw!r}: {exc}") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], name, size, Protection(protection)


def _receive_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count > 0:
        chunk = sock.recv(count)
        if not chunk:
            raise TokenError("the handoff message was cut short (the peer closed the socket)")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
