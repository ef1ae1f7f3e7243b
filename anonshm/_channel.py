"""channel(), ChannelReader and ChannelWriter: a stream of buffers to a long-lived worker.

One anonymous memory cut into slots, mapped once on each side, and a pair of Unix
stream sockets that say which slot holds the next message and which slots are free
again (``_stream`` has the wire).  The writer creates and maps the memory at its first
write, in the process that writes: it then seals it against every new writable map
(``F_SEAL_FUTURE_WRITE``, the linux backend) and sends the reader a read-only
descriptor.  So the memory's writable descriptor never leaves the writer's process,
and the reader holds only what maps read-only.

Small messages are decided by system calls: the writer makes one per message (the
record), the reader one per batch of records (a single ``recv_into`` takes all that
are queued) and one per batch of acknowledgements (half the slots).  The writer reads
acknowledgements only when it has no free slot.
"""

import sys

from ._backend import backend
from ._errors import AnonShmError
from ._memory import DEFAULT_NAME

if sys.platform == "win32":
    from ._nochannel import ChannelReader, ChannelWriter
else:
    from ._end import pair
    from ._reader import ChannelReader
    from ._writer import ChannelWriter

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from typing import Final


__all__ = ["DEFAULT_SLOTS", "ChannelReader", "ChannelWriter", "channel"]

# Measured (benchmarks/, 4 KiB messages to a worker that reads every byte): throughput
# grows with the slots in flight up to about 64 and is flat beyond; 64 slots of 4 KiB
# are 256 KiB of memory.
DEFAULT_SLOTS: "Final" = 64


def unsupported() -> AnonShmError:
    """The error of a backend without channels (Windows, for now)."""
    return AnonShmError(
        f"the {backend.FEATURES.name} backend has no channels: a channel's reader gets "
        "its memory and its pipe over a Unix socket, and this backend's sockets carry "
        "no handles"
    )


def channel(
    slot_size: int, *, slots: int = DEFAULT_SLOTS, name: str = DEFAULT_NAME
) -> "tuple[ChannelReader, ChannelWriter]":
    """A new channel: both ends, in this process, ready to be handed on.

    ``slots`` messages of up to ``slot_size`` bytes each can be in flight; the writer
    waits (or times out) while all are.  Hand each end to the process that uses it
    (``spawn(inherit=[reader])``, a multiprocessing argument, ``send()``), then close
    yours: the other side sees the end of the stream, or a broken pipe, only once
    every copy of the peer's end is closed.

    Args:
        slot_size: the largest message, in bytes (each slot takes whole pages).
        slots: how many messages may be in flight, 1 to 1024.
        name: the label of the channel's memory (``ps``) and of its inherited entries.

    Raises:
        TypeError, ValueError: a bad ``slot_size``, ``slots`` or ``name``.
        AnonShmError: the backend has no channels (Windows, for now).

    Example:
        >>> from anonshm import channel
        >>> reader, writer = channel(4096, slots=8, name="frames")
        >>> with reader, writer:
        ...     writer.write(b"one frame")
        ...     with writer.reserve(5) as buf:
        ...         buf[:] = b"two!!"
        ...     first = reader.read()
        ...     with reader.view() as second:
        ...         first, bytes(second), second.readonly
        (b'one frame', b'two!!', True)
    """
    if sys.platform != "win32" and backend.FEATURES.sockets:
        return pair(ChannelReader, ChannelWriter, slot_size, slots, name)
    raise unsupported()
