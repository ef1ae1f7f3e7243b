"""ChannelWriter: the end of a channel that writes (``_channel`` tells the design)."""

import _socket
import errno
import os
import struct
import sys
from _pickle import PickleBuffer
from itertools import chain, starmap
from operator import itemgetter

assert sys.platform != "win32"  # for type checkers: POSIX only (see _channel)

from . import _stream, _unix  # noqa: E402
from ._backend import backend  # noqa: E402
from ._end import End, join  # noqa: E402
from ._errors import ChannelError  # noqa: E402
from ._hints import join as _join  # noqa: E402
from ._holder import Pending, close_all, close_first  # noqa: E402
from ._memory import AnonymousMemory  # noqa: E402
from ._stream import DONTWAIT, HELLO, HELLO_MAGIC, NOSIGNAL, RECORD, WORD  # noqa: E402
from ._wire import READ_WRITE  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import mmap
    import signal as _signal  # the C half's names and types, which typeshed has not
    from types import TracebackType
    from typing import Final, final

    import typing_extensions
else:
    import _signal  # signal.getsignal makes an enum per call: 1 us on every write

    from ._compat import final
_join(globals(), "TracebackType", "mmap", "typing_extensions")

__all__ = ["ChannelWriter", "Reservation"]

_RECV_INTO: "Final" = _socket.socket.recv_into
_WRITE: "Final" = os.write
_GETSIGNAL: "Final" = _signal.getsignal
_SIGPIPE: "Final" = _signal.SIGPIPE
_SIG_IGN: "Final" = _signal.SIG_IGN
_FDS: "Final" = struct.Struct("2i")  # two descriptors in SCM_RIGHTS: native C ints
_POLLIN: "Final" = 0x001
_RECORD: "Final" = RECORD.pack
_NO_SIGPIPE: "Final" = _stream.write_without_sigpipe
_LAST: "Final" = (-1,)  # list.pop's argument, for map()
_FIRST: "Final" = itemgetter(0)


@final
class ChannelWriter(End):
    """The end of a channel that writes: one writer per channel, used by one thread at a time.

    Made by :func:`channel` (or imported in the process that writes).  Its first
    write creates the channel's memory and maps it here; from then on this end stays
    in this process.

    Example:
        >>> from anonshm import channel
        >>> reader, writer = channel(64, slots=2)
        >>> with reader, writer:
        ...     writer.write(b"a"); writer.write(b"b")
        ...     writer.write(b"c", timeout=0)  # both slots are in flight
        Traceback (most recent call last):
        ...
        TimeoutError: timed out: no free slot (all 2 are in flight)
    """

    # Who has each slot, at every line (an interrupt can land between any two): free
    # here, claimed by one write (until its record is sent, or it is free again),
    # parked (a reserve() view outlived its block), or the reader's (in flight).
    _free: "list[int]"
    _claim: "list[int]"  # the slot write() works on; moved in and out in single C calls
    _sent: "list[object]"  # what the record's os.write returned, stored in the same C call
    _flight: bytearray  # 1: the slot is the reader's (sent, not acknowledged)
    _parked: "list[tuple[int, memoryview]]"  # reserved slots whose views outlived their block
    _acks: bytearray
    _got: "list[int]"  # what each recv_into of acknowledgements returned (same C call)
    _returning: "list[int]"  # slots given back, being made free (see _collect)
    _have: int = 0  # bytes of an acknowledgement split across reads
    _kind = "channel writer"
    _role = _stream.WRITER

    def _fresh(self) -> None:
        self._free = []
        self._claim = []
        self._sent = []
        self._parked = []
        self._got = []
        self._returning = []

    def _break(self, exc: BaseException) -> BaseException:
        self._free.clear()  # for good: the next write waits for no slot, it raises
        return super()._break(exc)

    def _closing(self) -> None:
        for index in range(len(self._parked) - 1, -1, -1):  # those gone let go of the map
            try:
                self._parked[index][1].release()
            except BufferError:
                continue
            del self._parked[index]

    def _begin(self) -> "mmap.mmap":
        """Create, map and seal the memory; send the reader its descriptor and the pipe's.

        Until the hello is sent an interrupt undoes it all (the next write starts
        again); once it is, the end is set up whatever line the interrupt lands on.
        """
        sock = self._start()
        size = self._slots * self._stride
        owned = self._owned
        hello: list[int] = []
        mapped: list[tuple[mmap.mmap, memoryview]] = []
        try:
            with AnonymousMemory(size, name=self._name) as mem:
                with mem._live().borrow() as (fd, _, _):
                    mapped.extend(map(_map_writable, (fd,), (size,)))
                if backend.FEATURES.freeze:
                    mem.freeze()  # no holder maps it for writing again; this map still writes
                # The records' pipe, made into the list that owns it in one C call
                # (read end, write end); the read end goes to the reader, then here shut.
                owned.extend(chain.from_iterable(starmap(os.pipe, [()])))
                shared = Pending()  # the reader's read-only descriptor, closed once sent
                try:
                    with mem._live().borrow() as (fd, _, twin):
                        backend.readonly(shared, fd, twin)
                    fds = _FDS.pack(shared[0], owned[0])
                    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
                    data = [HELLO.pack(HELLO_MAGIC, size)]
                    # Stored in the same C call as it is sent: after it, the reader has
                    # the memory, whatever line an interrupt lands on.
                    hello.extend(map(sock.sendmsg, (data,), (rights,), (NOSIGNAL,)))
                except OSError as exc:
                    _stream.broken(exc, f"the reader of {self._name!r} is gone")
                finally:
                    close_all(shared)
            self._established(sock, *mapped[0])
        except BaseException:
            if hello:  # the reader has it all: finish here, then let the exception go on
                self._established(sock, *mapped[0])
                raise
            close_all(owned)
            if mapped:
                _unix.unmap(*mapped.pop())
            raise
        return mapped[0][0]

    def _established(self, sock: "_socket.socket", mm: "mmap.mmap", whole: memoryview) -> None:
        """The state of an end whose reader has its memory and pipe (again: no change)."""
        owned = self._owned
        if len(owned) == 2:
            close_first(owned)  # the read end: the reader's now
        _stream.no_sigpipe(owned[0])
        if self._mm is None:
            self._pipe = owned[0]
            self._free = list(range(self._slots - 1, -1, -1))  # pop() gives slot 0 first
            self._flight = bytearray(self._slots)
            self._acks = bytearray((self._slots + 1) * WORD)
            self._poller = _stream.poller(sock, _POLLIN)
            self._mm, self._whole = mm, whole

    def write(self, data: "typing_extensions.Buffer", timeout: float | None = None) -> None:
        """Copy ``data`` (any bytes-like object) into a free slot and send it.

        Waits while every slot is in flight; ``timeout`` (seconds) bounds the wait.

        Raises:
            ValueError: ``data`` is longer than ``slot_size``, or this end is closed.
            TimeoutError: no slot came free within ``timeout``; nothing was sent.
            BrokenPipeError: the reader is gone (closed, or its process died).
            ChannelError: the reader broke the protocol.
        """
        # The path of every small message, kept short: a Python call costs as much
        # as copying a few KiB (benchmarks/, --profile).
        claim = self._claim
        if claim:  # a write an interrupt cut short left its slot here
            self._settle(claim, self._sent)
        mm = self._mm
        if mm is None:
            mm = self._begin()
        if type(data) is not bytes:
            data = _contiguous(data)
        length = len(data)
        if length > self._slot_size:
            raise ValueError(
                f"a message of {length} bytes does not fit a slot of {self._slot_size}"
            )
        sent = self._sent
        sent.clear()
        free = self._free
        if free:
            claim.extend(map(free.pop, _LAST))  # taken and held in one C call
        else:
            self._acquire(timeout, claim)
        slot = claim[0]
        start = slot * self._stride
        try:
            mm[start : start + length] = data
            # The record, stored in `sent` in the same C call as it is written: from
            # then on the slot is the reader's, whatever line an interrupt lands on.
            if _GETSIGNAL(_SIGPIPE) == _SIG_IGN:  # as Python starts: EPIPE, no signal
                sent.extend(map(_WRITE, (self._pipe,), (_RECORD(slot, length),)))
            else:
                sent.extend(map(_NO_SIGPIPE, (self._pipe,), (_RECORD(slot, length),)))
        except BrokenPipeError:
            raise self._gone() from None
        finally:
            if sent:
                self._flight[slot] = 1
                claim.clear()
            else:
                free.extend(map(claim.pop, _LAST))

    async def write_async(self, data: "typing_extensions.Buffer") -> None:
        """:meth:`write` on the running asyncio loop: waits there for a free slot.

        The same errors as :meth:`write`; bound it with ``asyncio.timeout()``.  A
        cancelled wait sends nothing.  For zero copy, ``async with writer.reserve(n)``.
        """
        from ._aio import readable  # noqa: PLC0415 - import anonshm never loads asyncio

        while True:
            try:
                return self.write(data, timeout=0)
            except TimeoutError:
                await readable(self._live().fileno())  # slots come back on the socket

    def reserve(self, size: int, timeout: float | None = None) -> "Reservation":
        """A free slot to fill in place: ``with writer.reserve(n) as buf: ...``.

        ``buf`` is a writable ``memoryview`` of exactly ``size`` bytes of the slot;
        the message is sent when the block ends, and nothing is sent when the block
        raises (the slot is free again).  A view made from ``buf`` must not outlive
        the block: if one does, nothing is sent, the block raises ``BufferError``, and
        the slot stays out of use until that view goes.  ``async with`` waits for the
        slot on the running asyncio loop instead (``timeout`` is then not used: bound it
        with ``asyncio.timeout()``).

        Raises:
            ValueError: ``size`` is more than ``slot_size`` or negative.
            TimeoutError, BrokenPipeError, ChannelError: as :meth:`write`, when the
                block is entered.
        """
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if not 0 <= size <= self._slot_size:
            raise ValueError(f"cannot reserve {size} bytes in slots of {self._slot_size}")
        return Reservation(self, size, timeout)

    def _acquire(self, timeout: float | None, claim: "list[int]") -> None:
        """Claim a slot (into ``claim``) once the reader gives one back, or TimeoutError."""
        sock = self._live()
        deadline = _stream.deadline(timeout)
        free = self._free
        while True:
            self._collect(sock)
            if self._parked:
                self._unpark()
            if free:
                claim.extend(map(free.pop, _LAST))
                return
            if not self._flight.count(1):
                raise BufferError(
                    f"every slot of {self._name!r} is held by a view that outlived its "
                    "reserve() block: none can come free until one of them is gone"
                )
            assert self._poller is not None
            _stream.wait(self._poller, deadline, f"no free slot (all {self._slots} are in flight)")

    def _settle(self, claim: "list[int]", sent: "list[object]") -> None:
        """Finish a claim an interrupt cut short: the reader's if its record went, else free."""
        if sent:
            self._flight[claim[0]] = 1
            claim.clear()
        else:
            self._free.extend(map(claim.pop, _LAST))

    def _collect(self, sock: "_socket.socket") -> None:
        """Take in every acknowledgement queued now; none are waited for.

        Each step leaves the slots' owners known, whatever line an interrupt lands on:
        what a read returned is in ``_got`` from the C call that read it, and the slots
        it gave back are in ``_returning`` until they are free (see _take_back).
        """
        got, returning = self._got, self._returning
        while True:
            if returning:
                self._give_back(returning)
            if not got:
                try:
                    space = memoryview(self._acks)[self._have :]
                    got.extend(map(_RECV_INTO, (sock,), (space,), (0,), (DONTWAIT,)))
                except BlockingIOError:
                    return
                except ConnectionResetError:
                    got.append(0)
            if not got[0]:
                raise self._break(
                    BrokenPipeError(errno.EPIPE, f"the reader of {self._name!r} is gone")
                )
            self._take_back(got, returning)

    def _take_back(self, got: "list[int]", returning: "list[int]") -> None:
        """Check the slots that ``got[0]`` more bytes of acknowledgements give back."""
        acks = self._acks
        have = self._have + got[0]
        whole = have - have % WORD
        slots = memoryview(acks)[:whole].cast("Q").tolist()
        flight, limit = self._flight, self._slots
        seen = set()
        for slot in slots:
            if slot >= limit or not flight[slot] or slot in seen:
                raise self._break(
                    ChannelError(
                        f"the reader of {self._name!r} gave back slot {slot}, which it "
                        "does not hold"
                    )
                )
            seen.add(slot)
        # One line and no call (no interrupt can land inside): the numbers leave the
        # buffer and become the slots to give back.
        acks[: have - whole], self._have, got[:], returning[:] = (
            acks[whole:have],
            have - whole,
            (),
            slots,
        )
        self._give_back(returning)

    def _give_back(self, returning: "list[int]") -> None:
        """The slots in ``returning`` are free again (done again after an interrupt: same)."""
        flight = self._flight
        for slot in returning:
            flight[slot] = 0
        free = self._free
        free[len(free) :], returning[:] = returning, ()

    def _gone(self) -> BaseException:
        return self._break(BrokenPipeError(errno.EPIPE, f"the reader of {self._name!r} is gone"))

    def _unpark(self) -> None:
        """Free the parked slots whose views are gone (each moved in one C call)."""
        parked = self._parked
        for index in range(len(parked) - 1, -1, -1):
            try:
                parked[index][1].release()
            except BufferError:
                continue
            self._free.extend(map(_FIRST, map(parked.pop, (index,))))


@final
class Reservation:
    """What :meth:`~anonshm.ChannelWriter.reserve` returns: a ``with`` block around one slot.

    While the block runs, its slot is among the writer's parked slots (as one whose
    view outlived its block): if an interrupt keeps ``__exit__`` from running, the
    slot is taken back once the block's views are gone, and nothing is sent.
    """

    __slots__ = ("_buf", "_entry", "_size", "_timeout", "_writer")

    def __init__(self, writer: ChannelWriter, size: int, timeout: float | None) -> None:
        self._writer = writer
        self._size = size
        self._timeout = timeout
        self._entry: tuple[int, memoryview] | None = None  # (slot, base), in writer._parked
        self._buf: memoryview | None = None

    def __enter__(self) -> memoryview:
        writer = self._writer
        if self._entry is not None:
            raise ValueError("this reserve() block is already entered")
        claim = writer._claim
        if claim:  # a write an interrupt cut short left its slot there
            writer._settle(claim, writer._sent)
        if writer._mm is None:
            writer._begin()
        writer._sent.clear()  # what the claim below finds there must be its own
        free = writer._free
        if free:
            claim.extend(map(free.pop, _LAST))
        else:
            writer._acquire(self._timeout, claim)
        try:
            start = claim[0] * writer._stride
            base = writer._whole[start : start + self._size]  # type: ignore[index]
            # The view handed out holds an export of `base`: while it, or any view
            # made from it, lives, base.release() is refused (see ChannelReader.view).
            buf = memoryview(PickleBuffer(base))
        except BaseException:
            free.extend(map(claim.pop, _LAST))
            raise
        parked = writer._parked
        # From the claim to the parked slots, in one C call.
        parked.extend(zip(map(claim.pop, _LAST), (base,), strict=True))
        self._entry, self._buf = parked[-1], buf
        return buf

    async def __aenter__(self) -> memoryview:
        from ._aio import readable  # noqa: PLC0415 - import anonshm never loads asyncio

        self._timeout = 0
        while True:
            try:
                return self.__enter__()
            except TimeoutError:
                await readable(self._writer._live().fileno())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        writer, entry, buf = self._writer, self._entry, self._buf
        if entry is None:
            return
        self._entry = self._buf = None
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # a consumer holds an export of it: base.release() below says so
        del buf
        try:
            entry[1].release()
        except BufferError:  # left parked: taken back once the views are gone
            if exc_type is None:
                raise BufferError(
                    "a view of the reserved buffer outlives the reserve() block, so the "
                    "message was not sent; the slot is used again once that view is gone"
                ) from None
            return
        parked = writer._parked
        if exc_type is not None:  # nothing is sent: the slot is free again
            writer._free.extend(map(_FIRST, map(parked.pop, (parked.index(entry),))))
            return
        claim, sent = writer._claim, writer._sent
        if claim:
            writer._settle(claim, sent)
        sent.clear()
        claim.extend(map(_FIRST, map(parked.pop, (parked.index(entry),))))
        slot = claim[0]
        try:  # the record, as write() sends it
            if _GETSIGNAL(_SIGPIPE) == _SIG_IGN:
                sent.extend(map(_WRITE, (writer._pipe,), (_RECORD(slot, self._size),)))
            else:
                sent.extend(map(_NO_SIGPIPE, (writer._pipe,), (_RECORD(slot, self._size),)))
        except BrokenPipeError:
            raise writer._gone() from None
        finally:
            writer._settle(claim, sent)


def _map_writable(fd: int, size: int) -> "tuple[mmap.mmap, memoryview]":
    return _unix.map(fd, 0, size, READ_WRITE, populate=False, hugepages=False)


def _contiguous(data: object) -> memoryview:
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("data must be C-contiguous (a slice with a step is not: copy it)")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


join(ChannelWriter)
