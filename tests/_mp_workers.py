"""Worker functions for the multiprocessing tests.

spawn and forkserver children import what they run by module name: keeping the
workers in this small module means they import it alone, not a test module with its
fixtures, and find it through the repository root that pytest puts on ``sys.path``
(multiprocessing hands the parent's ``sys.path`` to those children).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from anonshm import AnonymousMemory, Protection

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.queues import SimpleQueue

    from anonshm import ChannelReader, ChannelWriter


class Seen(NamedTuple):
    """What a worker found in the memory it was handed."""

    pid: int
    name: str
    size: int
    protection: int
    device: int
    inode: int
    frozen: bool
    writable_map_refused: bool
    head: bytes


def touch(mem: AnonymousMemory, data: bytes, offset: int = 0) -> Seen:
    """Read the first bytes, write ``data`` at ``offset`` if allowed, close, say what arrived."""
    if not isinstance(mem, AnonymousMemory):
        raise TypeError(f"the worker got {type(mem).__name__}, not an AnonymousMemory")
    with mem:
        st = os.fstat(mem.fileno())
        with mem.map(length=min(16, mem.size), protection=Protection.READ_ONLY) as before:
            head = bytes(before.buf)
        try:
            view = mem.map(protection=Protection.READ_WRITE)
        except PermissionError:
            refused = True
        else:
            refused = False
            with view:
                view[offset : offset + len(data)] = data
        return Seen(
            pid=os.getpid(),
            name=mem.name,
            size=mem.size,
            protection=int(mem.protection),
            device=st.st_dev,
            inode=st.st_ino,
            frozen=mem.frozen,
            writable_map_refused=refused,
            head=head,
        )


def touch_slot(mem: AnonymousMemory, slot: int) -> Seen:
    """Write the byte ``slot + 1`` at offset ``slot`` (one slot per task of a map())."""
    return touch(mem, bytes([slot + 1]), slot)


def touch_and_report(conn: Connection, mem: AnonymousMemory, data: bytes) -> None:
    """Process target: :func:`touch`, then send what was seen back over ``conn``."""
    with conn:
        conn.send(touch(mem, data))


def channel_echo(requests: ChannelReader, replies: ChannelWriter) -> None:
    """Answer each request with it in capitals, until the requests end."""
    with requests, replies:
        for request in requests:
            replies.write(request.upper(), timeout=30)


def channel_write_numbers(writer: ChannelWriter, count: int) -> int:
    """Write the numbers below ``count``, as text; how many were written."""
    with writer:
        for number in range(count):
            writer.write(b"%d" % number, timeout=30)
    return count


def channel_sum(reader: ChannelReader, results: SimpleQueue[int]) -> None:
    """Put the sum of the 8-byte numbers read, once the stream ends."""
    with reader:
        results.put(sum(int.from_bytes(buf, "little") for buf in reader))
