"""ChannelReader: the end of a channel that reads (``_channel`` tells the design)."""

import errno
import os
import sys
from _pickle import PickleBuffer

assert sys.platform != "win32"  # for type checkers: POSIX only (see _channel)

from . import _stream, _unix  # noqa: E402
from ._backend import backend  # noqa: E402
from ._end import End, check_pipe, join  # noqa: E402
from ._errors import ChannelError  # noqa: E402
from ._hints import join as _join  # noqa: E402
from ._holder import Pending, close_all  # noqa: E402
from ._memory import AnonymousMemory  # noqa: E402
from ._stream import NOSIGNAL, RECORD, WORD  # noqa: E402
from ._wire import READ_ONLY  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Final, final

else:
    from ._compat import final
_join(globals(), "Iterator")

__all__ = ["ChannelReader"]

_READV: "Final" = os.readv
_POLLIN: "Final" = 0x001


@final
class ChannelReader(End):
    """The end of a channel that reads: one reader per channel, used by one thread at a time.

    Maps the channel's memory read-only and holds no writable descriptor of it; checks
    every slot number and length the writer sends.  Iterating reads messages (as
    ``bytes``) until the writer closed and all are read.

    Example:
        >>> from anonshm import channel
        >>> reader, writer = channel(16)
        >>> with reader:
        ...     with writer:
        ...         for word in (b"to", b"the", b"worker"):
        ...             writer.write(word)
        ...     list(reader)  # the writer closed: the stream ends once drained
        [b'to', b'the', b'worker']
    """

    _records: bytearray
    _queued: "memoryview"  # _records as 64-bit words
    _at: int = 0  # the next record, in records
    _count: int = 0  # whole records in _records
    _have: int = 0  # bytes in _records
    _mine: bytearray  # 1: the writer sent the slot and has not been given it back
    _held: int = 0  # slots that are mine
    _done: "memoryview"  # acknowledgements not yet sent, as 64-bit words
    _ndone: int = 0
    _batch: int = 1
    _viewed: "list[tuple[int, memoryview]]"
    _ended: bool = False
    _kind = "channel reader"
    _role = _stream.READER

    def _fresh(self) -> None:
        self._viewed = []

    def _begin(self, deadline: float | None) -> None:
        """Receive the memory and the records' pipe with the writer's first message."""
        sock = self._start()
        what = f"the memory of channel {self._name!r}"
        pending = Pending()
        try:
            try:
                size = _stream.receive_hello(sock, deadline, self._owned, pending, what)
                expected = self._slots * self._stride
                if size != expected:
                    raise ChannelError(
                        f"{what} is {size} bytes, not {self._slots} slots of {self._stride}"
                    )
                check_pipe(self._owned[0], what)
                mem = AnonymousMemory._adopt(
                    pending,
                    READ_ONLY,
                    ChannelError,
                    what,
                    name=self._name,
                    size=size,
                    fixed_size=backend.FEATURES.fixed_size,
                    handed=True,
                )
            except (EOFError, TimeoutError):
                raise  # nothing consumed: the same call may be made again
            except Exception as exc:
                self._break(exc)  # the stream is out of step for good
                raise
        finally:
            close_all(pending)
        with mem, mem._live().borrow() as (fd, _, _):
            mm, whole = _unix.map(
                fd, 0, size, READ_ONLY, populate=False, hugepages=False, shared=True
            )
        slots = self._slots
        self._records = bytearray((slots + 1) * RECORD.size)
        self._queued = memoryview(self._records).cast("Q")
        self._mine = bytearray(slots)
        self._done = memoryview(bytearray(slots * WORD)).cast("Q")
        self._batch = max(1, slots // 2)
        self._pipe = self._owned[0]
        self._poller = _stream.poller_fd(self._pipe, _POLLIN)
        self._mm, self._whole = mm, whole

    def read(self, timeout: float | None = None) -> bytes:
        """The next message, copied out as ``bytes``; waits for it up to ``timeout`` seconds.

        Raises:
            EOFError: the writer closed the channel (or died) and every message was read.
            TimeoutError: no message within ``timeout``; nothing was consumed.
            BufferError: every slot is held by a live view of an earlier message,
                so no message can come until one is released.
            ChannelError: the writer broke the protocol.
        """
        if self._viewed:
            self._reclaim()
        at = self._at
        if at < self._count:
            queued = self._queued
            slot, length = queued[2 * at], queued[2 * at + 1]
            self._at = at + 1
        else:
            slot, length = self._next(timeout)
        mine = self._mine
        if slot >= self._slots or length > self._slot_size or mine[slot]:
            self._refuse(slot, length)
        mm = self._mm
        assert mm is not None
        start = slot * self._stride
        data = mm[start : start + length]
        mine[slot] = 1
        self._held += 1
        done = self._ndone
        self._done[done] = slot
        self._ndone = done = done + 1
        if done >= self._batch:
            self._flush()
        return data

    def view(self, timeout: float | None = None) -> memoryview:
        """The next message, in place: a read-only ``memoryview`` of exactly its bytes.

        Best as ``with reader.view() as buf: ...``.  The message's slot is given back
        to the writer only once ``buf`` and every view made from it (slices, numpy
        arrays) are gone, so nothing ever reuses memory under a live view; leaving
        the block releases ``buf`` itself (``memoryview``'s own rule: ``BufferError``
        if an object still holds its buffer exported).  Holding views of all the
        slots stops the stream: the next ``read``/``view`` raises ``BufferError``.

        Raises:
            The same errors as :meth:`read`.
        """
        if self._viewed:
            self._reclaim()
        at = self._at
        if at < self._count:
            queued = self._queued
            slot, length = queued[2 * at], queued[2 * at + 1]
            self._at = at + 1
        else:
            slot, length = self._next(timeout)
        mine = self._mine
        if slot >= self._slots or length > self._slot_size or mine[slot]:
            self._refuse(slot, length)
        whole = self._whole
        assert whole is not None
        start = slot * self._stride
        base = whole[start : start + length]
        mine[slot] = 1
        self._held += 1
        self._viewed.append((slot, base))
        # The view handed out holds an export of `base` (a PickleBuffer lends base's
        # own buffer): while it or any view made from it lives, base.release() is
        # refused, and _reclaim() keeps the slot.
        return memoryview(PickleBuffer(base))

    async def read_async(self) -> bytes:
        """:meth:`read` on the running asyncio loop: waits there, never blocking it.

        The same errors as :meth:`read`; bound it with ``asyncio.timeout()``.  A
        cancelled wait consumes nothing: the message is there for the next call.

        Example:
            >>> import asyncio
            >>> from anonshm import channel
            >>> async def main():
            ...     reader, writer = channel(64)
            ...     with reader, writer:
            ...         later = asyncio.create_task(reader.read_async())
            ...         await asyncio.sleep(0)  # the task waits on the loop
            ...         await writer.write_async(b"async")
            ...         return await later
            >>> asyncio.run(main())
            b'async'
        """
        from ._aio import readable  # noqa: PLC0415 - import anonshm never loads asyncio

        while True:
            try:
                return self.read(timeout=0)
            except TimeoutError:
                await readable(self._ready_fd())

    async def view_async(self) -> memoryview:
        """:meth:`view` on the running asyncio loop (as :meth:`read_async`)."""
        from ._aio import readable  # noqa: PLC0415

        while True:
            try:
                return self.view(timeout=0)
            except TimeoutError:
                await readable(self._ready_fd())

    def _ready_fd(self) -> int:
        # Before the first message its hello comes on the socket; then records, on the pipe.
        return self._pipe if self._pipe >= 0 else self._live().fileno()

    def poll(self, timeout: float | None = 0) -> bool:
        """Whether a message (or the end of the stream) is ready, waiting up to ``timeout``."""
        if self._at < self._count:
            return True
        try:
            self._next(timeout, take=False)
        except TimeoutError:
            return False
        except EOFError:
            return True
        return True

    def __iter__(self) -> "Iterator[bytes]":
        """Each message as ``bytes``, until the writer closed and all are read."""
        while True:
            try:
                data = self.read()
            except EOFError:
                return
            yield data

    def _next(self, timeout: float | None, *, take: bool = True) -> tuple[int, int]:
        """The next record, read from the socket (waiting up to ``timeout``)."""
        self._live()
        deadline = _stream.deadline(timeout)
        if self._mm is None:
            self._begin(deadline)
        records = self._records
        count, have = self._count, self._have
        if count:  # all taken: keep what is left of a record split across reads
            rest = have - count * RECORD.size
            records[:rest] = records[have - rest : have]
            self._at = self._count = 0
            self._have = have = rest
        view = memoryview(records)
        pipe = self._pipe
        while True:
            if self._ended:
                raise EOFError(f"the writer closed channel {self._name!r}")
            self._idle()  # before any wait: what the writer may be waiting for
            if deadline is not None:
                assert self._poller is not None
                _stream.wait(self._poller, deadline, "no message arrived")
            # Blocks until records come (none needed any poll first): one system call
            # for all that are queued.
            got = _READV(pipe, [view[have:]])
            if not got:
                self._ended = True
                if have:
                    raise self._break(
                        ChannelError(f"the writer of {self._name!r} ended inside a record")
                    )
                raise EOFError(f"the writer closed channel {self._name!r}")
            have += got
            self._have = have
            count = have // RECORD.size
            if count:
                self._count = count
                if not take:
                    return -1, -1
                self._at = 1
                queued = self._queued
                return queued[0], queued[1]

    def _idle(self) -> None:
        """Before waiting: give back what the writer may be waiting for."""
        if self._viewed:
            self._reclaim()
        if self._held < self._slots:
            return  # the writer has a free slot: whatever it sends next wakes us
        if self._ndone:
            self._flush()  # every slot is here: the writer can send nothing until this
        else:
            raise BufferError(
                f"all {self._slots} slots of {self._name!r} are held by live views of "
                "earlier messages: no message can come until one is released"
            )

    def _reclaim(self) -> None:
        keep = []
        for slot, base in self._viewed:
            try:
                base.release()
            except BufferError:
                keep.append((slot, base))
                continue
            done = self._ndone
            self._done[done] = slot
            self._ndone = done + 1
        self._viewed[:] = keep
        if self._ndone >= self._batch:
            self._flush()

    def _flush(self) -> None:
        """Give the writer back every slot read, in one send."""
        done = self._ndone
        sock = self._sock
        if sock is None or not done:
            return
        acks = self._done[:done]
        try:
            sock.sendall(acks, NOSIGNAL)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            # The writer is gone: nothing to give back, and the messages still queued
            # are read before the end of the stream.
        mine = self._mine
        for slot in acks:
            mine[slot] = 0
        self._held -= done
        self._ndone = 0

    def _refuse(self, slot: int, length: int) -> None:
        if slot >= self._slots:
            problem = f"slot {slot}, of {self._slots}"
        elif length > self._slot_size:
            problem = f"{length} bytes in slot {slot}, of {self._slot_size}"
        else:
            problem = f"slot {slot}, which the reader still holds"
        raise self._break(ChannelError(f"the writer of {self._name!r} sent {problem}"))


join(ChannelReader)
