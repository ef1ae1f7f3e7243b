"""ChannelReader: the end of a channel that reads (``_channel`` tells the design)."""

import errno
import os
import sys
from _pickle import PickleBuffer
from array import array
from operator import itemgetter

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
    from typing import Final, NoReturn, final

    import typing_extensions

else:
    from ._compat import final
_join(globals(), "Iterator", "NoReturn", "typing_extensions")

__all__ = ["ChannelReader"]

_READV: "Final" = os.readv
_POLLIN: "Final" = 0x001
_FIRST: "Final" = itemgetter(0)
_LAST: "Final" = (-1,)  # list.pop's argument, for map()


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
    _acks_sent: "list[int]"  # what the send of acknowledgements returned (same C call)
    _reads: "list[int]"  # what the readv of records returned (same C call)
    _taking: int = -1  # the slot of the record being taken (see _recover)
    _free_space: memoryview  # _records, to read into
    _fileno_watch: "_stream.Watch | None" = None
    _batch: int = 1
    _viewed: "list[tuple[int, memoryview]]"
    _ended: bool = False
    _kind = "channel reader"
    _role = _stream.READER

    def _fresh(self) -> None:
        self._viewed = []
        self._acks = []
        self._acks_sent = []
        self._reads = []

    def _begin(self, deadline: float | None) -> None:
        """Receive the memory and the records' pipe with the writer's first message."""
        sock = self._start()
        what = f"the memory of channel {self._name!r}"
        pending = Pending()
        got: list[tuple[bytes, list[tuple[int, int, bytes]], int, object]] = []
        done = False
        try:
            size = _stream.receive_hello(
                sock, deadline, owned=self._owned, pending=pending, got=got, what=what
            )
            expected = self._slots * self._stride
            if size != expected:
                raise ChannelError(
                    f"{what} is {size} bytes, not {self._slots} slots of {self._stride}"
                )
            check_pipe(self._owned[0], what)
            try:
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
            except ChannelError as exc:
                if "allow_resizable" not in str(exc):
                    raise
                raise ChannelError(
                    f"{what} can be resized by its writer (its size is not sealed), or its "
                    "huge pages taken back: the writer could make this process's reads SIGBUS"
                ) from None
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
            done = True
        except (EOFError, TimeoutError):
            if got and got[0][0]:  # consumed, then interrupted by a timeout: out of step
                self._break(ChannelError(f"receiving {what} was cut short: out of step"))
            raise  # nothing consumed: the same call may be made again
        except ChannelError as exc:
            self._break(exc)  # the stream is out of step for good
            raise
        finally:
            close_all(pending)
            if got and not done and self._broken is None:  # the hello is gone: so is the stream
                self._break(
                    ChannelError(
                        f"receiving {what} was interrupted after the writer's first message "
                        "was taken: the channel is out of step; close it"
                    )
                )
        if self._fileno_watch is not None:
            self._fileno_watch.register(self._pipe, _POLLIN)

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
        # Every line leaves the slot's owner known (an interrupt can land between any
        # two): a record taken is in _taking until its slot is in _acks (see _recover).
        at = self._at
        if at < self._count and not self._viewed and self._taking < 0 and not self._fileno_watch:
            queued = self._queued
            slot = queued[2 * at]
            length = queued[2 * at + 1]
            self._taking, self._at = slot, at + 1
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
        self._taking = -1
        if len(acks) >= self._batch:
            self._flush()
        return data

    def read_into(self, buffer: "typing_extensions.Buffer", timeout: float | None = None) -> int:
        """Copy the next message into ``buffer`` (writable, bytes-like); its length.

        One copy, into memory the caller reuses: for large messages ``read()`` pays
        for a new ``bytes`` each time (its pages are faulted in and zeroed afresh).

        Raises:
            ValueError: the message is longer than ``buffer``; it is not consumed.
            EOFError: as :meth:`read`, and so are ``TimeoutError``, ``BufferError`` and
                ``ChannelError``.

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
        slot, length = self._next(timeout)
        if slot >= self._slots or length > self._slot_size or self._mine[slot]:
            self._refuse(slot, length)
        if length > len(target):
            self._at, self._taking = self._at - 1, -1  # put back: the next call reads it
            raise ValueError(f"a message of {length} bytes does not fit a buffer of {len(target)}")
        start = slot * self._stride
        target[:length] = self._whole[start : start + length]  # type: ignore[index]
        self._mine[slot] = 1
        acks = self._acks
        acks.append(slot)
        self._taking = -1
        if len(acks) >= self._batch:
            self._flush()
        return length

    def _tidy(self) -> None:
        """Finish what an interrupted call left half-done, and take back views now gone."""
        if self._taking >= 0:
            self._recover()
        if self._acks_sent:
            self._flushed()
        if self._reads:
            self._have, self._reads[:] = self._have + self._reads[0], ()
        if self._viewed:
            self._reclaim()

    def _recover(self) -> None:
        """Finish taking a record that an interrupt cut short (``_taking``): its slot back."""
        slot = self._taking
        if slot >= self._slots:
            self._taking = -1
            raise self._break(ChannelError(f"the writer of {self._name!r} sent slot {slot}"))
        if not self._mine[slot] or (
            slot not in self._acks and all(held != slot for held, _ in self._viewed)
        ):  # taken, not yet recorded: the message is dropped and its slot given back
            self._mine[slot] = 1
            self._acks.append(slot)
        self._taking = -1

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
        slot, length = self._next(timeout)
        mine = self._mine
        if slot >= self._slots or length > self._slot_size or mine[slot]:
            self._refuse(slot, length)
        start = slot * self._stride
        base = self._whole[start : start + length]  # type: ignore[index]
        mine[slot] = 1
        viewed.append((slot, base))
        self._taking = -1
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
        """Whether a message (or the end of the stream) is ready, waiting up to ``timeout``.

        Before it waits it gives back what the writer may be waiting for, so a loop of
        ``while not reader.poll(1): ...`` never stalls the stream.
        """
        if self._at < self._count and self._taking < 0:
            return True
        if self._fileno_watch is None:
            return self._read_ahead(timeout)
        # With fileno() in use nothing is read ahead (see there): only look.
        self._tidy()
        if self._at < self._count:
            return True
        deadline = None if timeout is None else _stream.deadline(timeout)
        acks = self._acks
        if acks and len(acks) + len(self._viewed) >= self._slots:
            self._flush()
        ready = self._poller if self._poller is not None else _stream.poller(self._start(), _POLLIN)
        try:
            _stream.wait(ready, deadline, "poll")
        except TimeoutError:
            return False
        return True

    def _read_ahead(self, timeout: float | None) -> bool:
        try:
            self._next(timeout, take=False)  # records read ahead into this end
        except (TimeoutError, BufferError):
            return False
        except EOFError:
            pass
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
        """Take the next record (into ``_taking``), read from the pipe within ``timeout``.

        With ``take=False`` (poll), only make sure that one is queued.
        """
        self._tidy()
        if self._at < self._count:  # queued already (read() left it for the views)
            return self._take_queued() if take else (-1, -1)
        if self._mm is None or self._sock is None or self._broken is not None:
            deadline = self._started_by(timeout)  # the first message, or closed, or broken
        else:
            deadline = None if timeout is None else _stream.deadline(timeout)
        records = self._records
        count, have = self._count, self._have
        if count:  # all taken: keep what is left of a record split across reads
            rest = have - count * RECORD.size
            records[:rest] = records[have - rest : have]
            self._at, self._count, self._have = 0, 0, rest
            have = rest
        pipe = self._pipe
        reads = self._reads
        while True:
            if self._ended:
                raise EOFError(f"the writer closed channel {self._name!r}")
            if len(self._acks) + len(self._viewed) >= self._slots:
                self._idle()  # before any wait: what the writer may be waiting for
            if deadline is not None:
                assert self._poller is not None
                _stream.wait(self._poller, deadline, "no message arrived")
            # Blocks until records come (no poll first): one system call for all that
            # are queued, its result stored in the same C call and counted in one line.
            space = self._free_space[have:]
            if self._fileno_watch is not None:  # one record at a time: see fileno()
                space = space[: RECORD.size - have % RECORD.size]
            reads.extend(map(_READV, (pipe,), ([space],)))
            got = reads[0]
            self._have, reads[:] = have + got, ()
            if not got:
                self._end_of_stream(have)
            have += got
            count = have // RECORD.size
            if count:
                self._count = count
                if not take:
                    return -1, -1
                queued = self._queued
                slot, length = queued[0], queued[1]
                self._taking, self._at = slot, 1
                return slot, length

    def _take_queued(self) -> tuple[int, int]:
        at = self._at
        queued = self._queued
        slot, length = queued[2 * at], queued[2 * at + 1]
        self._taking, self._at = slot, at + 1
        if self._fileno_watch is not None and at + 1 >= self._count:
            self._fileno_watch.clear()  # the last record read ahead: none waits here
        return slot, length

    def _end_of_stream(self, have: int) -> "NoReturn":
        self._ended = True
        if have:
            raise self._break(ChannelError(f"the writer of {self._name!r} ended inside a record"))
        raise EOFError(f"the writer closed channel {self._name!r}")

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
        # Each slot moves from _viewed to _acks inside one C call.
        if len(viewed) == 1:  # the common case: the view of the previous message
            try:
                viewed[0][1].release()
            except BufferError:
                return
            acks.extend(map(_FIRST, map(viewed.pop, _LAST)))
        else:
            for index in range(len(viewed) - 1, -1, -1):
                try:
                    viewed[index][1].release()
                except BufferError:
                    continue
                acks.extend(map(_FIRST, map(viewed.pop, (index,))))
        if len(acks) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        """Give the writer back every slot read, in one send."""
        if self._acks_sent:
            self._flushed()
        acks = self._acks
        sock = self._sock
        if sock is None or not acks:
            return
        sent = self._acks_sent
        try:
            # Stored in the same C call as it is sent, so never sent twice.
            sent.extend(map(sock.send, (array("Q", acks),), (NOSIGNAL,)))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            # The writer is gone: nothing to give back, and the messages still queued
            # are read before the end of the stream.
            sent.append(len(acks) * WORD)
        self._flushed()

    def _flushed(self) -> None:
        """The bookkeeping of a send of acknowledgements (``_acks_sent``)."""
        acks, sent = self._acks, self._acks_sent
        count, rest = divmod(sent[0], WORD)
        if rest:  # a signal cut the send short inside a number
            raise self._break(
                ChannelError(f"giving back slots of {self._name!r} was cut short: out of step")
            )
        mine = self._mine
        for slot in acks[:count]:
            mine[slot] = 0
        acks[:count], sent[:] = (), ()

    def _break(self, exc: BaseException) -> BaseException:
        self._at = self._count  # for good: no record queued is served after this
        return super()._break(exc)

    def _closing(self) -> None:
        self._at = self._count = 0
        self._taking = -1
        for index in range(len(self._viewed) - 1, -1, -1):  # those gone let go of the map
            try:
                self._viewed[index][1].release()
            except BufferError:
                continue
            del self._viewed[index]
        watch = self._fileno_watch
        self._fileno_watch = None
        if watch is not None:
            watch.close()

    def fileno(self) -> int:
        """A descriptor readable when a message, or the end of the stream, is ready.

        For ``select``/``selectors``: after the first message its records come on the
        channel's pipe, not on the end's socket, so this is an ``epoll`` (Linux) or
        ``kqueue`` (macOS, the BSDs) descriptor watching both, made on the first call
        and closed with the end.  Once it is made, the reader takes records off the
        pipe one at a time (a system call per message, not per batch), so that it
        keeps none queued that the descriptor would not show.
        """
        self._live()
        watch = self._fileno_watch
        if watch is None:
            watch = self._fileno_watch = _stream.Watch(self._live().fileno())
            if self._pipe >= 0:
                watch.register(self._pipe, _POLLIN)
            if self._at < self._count:
                watch.mark()  # records read ahead wait here
        return watch.fileno()

    def _refuse(self, slot: int, length: int) -> None:
        if slot >= self._slots:
            problem = f"slot {slot}, of {self._slots}"
        elif length > self._slot_size:
            problem = f"{length} bytes in slot {slot}, of {self._slot_size}"
        else:
            problem = f"slot {slot}, which the reader still holds"
        raise self._break(ChannelError(f"the writer of {self._name!r} sent {problem}"))


join(ChannelReader)
