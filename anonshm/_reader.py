"""ChannelReader: the end of a channel that reads (``_channel`` tells the design)."""

import errno
import os
import sys
from _pickle import PickleBuffer
from array import array

assert sys.platform != "win32"  # for type checkers: POSIX only (see _channel)

from . import _stream, _unix  # noqa: E402
from ._backend import backend  # noqa: E402
from ._end import End, check_pipe, join  # noqa: E402
from ._errors import ChannelError  # noqa: E402
from ._hints import join as _join  # noqa: E402
from ._holder import Pending, close_all  # noqa: E402
from ._memory import AnonymousMemory  # noqa: E402
from ._stream import NOSIGNAL, RECORD  # noqa: E402
from ._wire import READ_ONLY  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Final, final

    import typing_extensions

else:
    from ._compat import final
_join(globals(), "Iterator", "typing_extensions")

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
    _acks: "list[int]"  # slots read and given up, not yet given back: sent by _flush
    _free_space: memoryview  # _records, to read into
    _batch: int = 1
    _viewed: "list[tuple[int, memoryview]]"
    _ended: bool = False
    _kind = "channel reader"
    _role = _stream.READER

    def _fresh(self) -> None:
        self._viewed = []
        self._acks = []

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
        self._free_space = memoryview(self._records)
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
        # The path of every small message, kept short: a Python call costs as much
        # as copying a few KiB (benchmarks/, --profile).
        at = self._at
        if at < self._count and not self._viewed:
            queued = self._queued
            slot = queued[2 * at]
            length = queued[2 * at + 1]
            self._at = at + 1
        else:
            slot, length = self._next(timeout)
        mine = self._mine
        if slot >= self._slots or length > self._slot_size or mine[slot]:
            self._refuse(slot, length)
        start = slot * self._stride
        data = self._mm[start : start + length]  # type: ignore[index]
        mine[slot] = 1
        acks = self._acks
        acks.append(slot)
        if len(acks) >= self._batch:
            self._flush()
        return data

    def read_into(self, buffer: "typing_extensions.Buffer", timeout: float | None = None) -> int:
        """Copy the next message into ``buffer`` (writable, bytes-like); its length.

        One copy, into memory the caller reuses: for large messages ``read()`` pays
        for a new ``bytes`` each time (its pages are faulted in and zeroed afresh).

        Raises:
            ValueError: the message is longer than ``buffer``; it is not consumed.
            The others as :meth:`read`.

        Example:
            >>> from anonshm import channel
            >>> reader, writer = channel(64)
            >>> with reader, writer:
            ...     writer.write(b"into a buffer")
            ...     target = bytearray(64)
            ...     length = reader.read_into(target)
            ...     bytes(target[:length])
            b'into a buffer'
        """
        target = memoryview(buffer)
        if target.readonly:
            raise TypeError("read_into() needs a writable buffer")
        target = target.cast("B") if target.format != "B" or target.ndim != 1 else target
        slot, length = self._next(timeout) if self._at >= self._count else self._pop()
        if slot >= self._slots or length > self._slot_size or self._mine[slot]:
            self._refuse(slot, length)
        if length > len(target):
            self._at -= 1  # put back: the next call reads it
            raise ValueError(f"a message of {length} bytes does not fit a buffer of {len(target)}")
        start = slot * self._stride
        target[:length] = self._whole[start : start + length]  # type: ignore[index]
        self._mine[slot] = 1
        acks = self._acks
        acks.append(slot)
        if len(acks) >= self._batch:
            self._flush()
        return length

    def _pop(self) -> tuple[int, int]:
        if self._viewed:
            self._reclaim()
        at = self._at
        queued = self._queued
        self._at = at + 1
        return queued[2 * at], queued[2 * at + 1]

    def view(self, timeout: float | None = None) -> memoryview:
        """The next message, in place: a read-only ``memoryview`` of exactly its bytes.

        Best as ``with reader.view() as buf: ...``.  The message's slot is given back
        to the writer only once ``buf`` and every view made from it (slices, numpy
        arrays) are gone, so nothing ever reuses memory under a live view; leaving
        the block releases ``buf`` itself (``memoryview``'s own rule: ``BufferError``
        if an object still holds its buffer exported).  The slot goes back at the
        reader's next call after that.  Holding views of all the slots stops the
        stream: the next ``read``/``view`` raises ``BufferError``.

        Raises:
            The same errors as :meth:`read`.
        """
        viewed = self._viewed
        if viewed:
            self._reclaim()
        at = self._at
        if at < self._count:
            queued = self._queued
            slot = queued[2 * at]
            length = queued[2 * at + 1]
            self._at = at + 1
        else:
            slot, length = self._next(timeout)
        mine = self._mine
        if slot >= self._slots or length > self._slot_size or mine[slot]:
            self._refuse(slot, length)
        start = slot * self._stride
        base = self._whole[start : start + length]  # type: ignore[index]
        mine[slot] = 1
        viewed.append((slot, base))
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
        """The next record, read from the pipe (waiting up to ``timeout``)."""
        if self._viewed:
            self._reclaim()
        if self._at < self._count:  # queued already (read() left it for the views)
            return self._pop() if take else (-1, -1)
        if self._mm is None or self._sock is None or self._broken is not None:
            deadline = self._started_by(timeout)  # the first message, or closed, or broken
        else:
            deadline = None if timeout is None else _stream.deadline(timeout)
        records = self._records
        count, have = self._count, self._have
        if count:  # all taken: keep what is left of a record split across reads
            rest = have - count * RECORD.size
            records[:rest] = records[have - rest : have]
            self._at = self._count = 0
            self._have = have = rest
        pipe = self._pipe
        while True:
            if self._ended:
                raise EOFError(f"the writer closed channel {self._name!r}")
            if len(self._acks) + len(self._viewed) >= self._slots:
                self._idle()  # before any wait: what the writer may be waiting for
            if deadline is not None:
                assert self._poller is not None
                _stream.wait(self._poller, deadline, "no message arrived")
            # Blocks until records come (none needed any poll first): one system call
            # for all that are queued.
            got = _READV(pipe, [self._free_space[have:]])
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

    def _started_by(self, timeout: float | None) -> float | None:
        """The deadline of ``timeout``, once the memory is here (the first message)."""
        self._live()  # closed, or broken by the writer: raises
        deadline = None if timeout is None else _stream.deadline(timeout)
        if self._mm is None:
            self._begin(deadline)
        return deadline

    def _idle(self) -> None:
        """Before waiting: give back what the writer may be waiting for."""
        if len(self._acks) + len(self._viewed) < self._slots:
            return  # the writer has a free slot: whatever it sends next wakes us
        if self._acks:
            self._flush()  # every slot is here: the writer can send nothing until this
        else:
            raise BufferError(
                f"all {self._slots} slots of {self._name!r} are held by live views of "
                "earlier messages: no message can come until one is released"
            )

    def _reclaim(self) -> None:
        """Give back the slots of views that are gone (their base releases now)."""
        viewed = self._viewed
        acks = self._acks
        if len(viewed) == 1:  # the common case: the view of the previous message
            slot, base = viewed[0]
            try:
                base.release()
            except BufferError:
                return
            viewed.clear()
            acks.append(slot)
        else:
            keep = []
            for slot, base in viewed:
                try:
                    base.release()
                except BufferError:
                    keep.append((slot, base))
                    continue
                acks.append(slot)
            viewed[:] = keep
        if len(acks) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        """Give the writer back every slot read, in one send."""
        acks = self._acks
        sock = self._sock
        if sock is None or not acks:
            return
        try:
            sock.sendall(array("Q", acks), NOSIGNAL)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            # The writer is gone: nothing to give back, and the messages still queued
            # are read before the end of the stream.
        mine = self._mine
        for slot in acks:
            mine[slot] = 0
        acks.clear()

    def _refuse(self, slot: int, length: int) -> None:
        if slot >= self._slots:
            problem = f"slot {slot}, of {self._slots}"
        elif length > self._slot_size:
            problem = f"{length} bytes in slot {slot}, of {self._slot_size}"
        else:
            problem = f"slot {slot}, which the reader still holds"
        raise self._break(ChannelError(f"the writer of {self._name!r} sent {problem}"))


join(ChannelReader)
