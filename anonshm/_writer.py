"""ChannelWriter: the end of a channel that writes (``_channel`` tells the design)."""

import _socket
import errno
import os
import struct
import sys
from _pickle import PickleBuffer
from itertools import chain, starmap

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

    _free: "list[int]"
    _flight: bytearray  # 1: the slot is the reader's (sent, not acknowledged)
    _parked: "list[tuple[int, memoryview]]"  # reserved slots whose views outlived their block
    _acks: bytearray
    _have: int = 0  # bytes of an acknowledgement split across reads
    _kind = "channel writer"
    _role = _stream.WRITER

    def _fresh(self) -> None:
        self._free = []
        self._parked = []

    def _begin(self) -> "mmap.mmap":
        """Create, map and seal the memory; send the reader its descriptor and the pipe's."""
        sock = self._start()
        size = self._slots * self._stride
        owned = self._owned
        with AnonymousMemory(size, name=self._name) as mem:
            with mem._live().borrow() as (fd, _, _):
                mm, whole = _unix.map(fd, 0, size, READ_WRITE, populate=False, hugepages=False)
            try:
                if backend.FEATURES.freeze:
                    mem.freeze()  # no holder maps it for writing again; this map still writes
                # The records' pipe, made into the list that owns it in one C call
                # (read end, write end); the read end goes to the reader, then here shut.
                owned.extend(chain.from_iterable(starmap(os.pipe, [()])))
                shared = Pending()  # the reader's read-only descriptor, closed once sent
                try:
                    with mem._live().borrow() as (fd, _, twin):
                        backend.readonly(shared, fd, twin)
                    rights = _FDS.pack(shared[0], owned[0])
                    sock.sendmsg(
                        [HELLO.pack(HELLO_MAGIC, size)],
                        [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)],
                        NOSIGNAL,
                    )
                except OSError as exc:
                    _stream.broken(exc, f"the reader of {self._name!r} is gone")
                finally:
                    close_all(shared)
                close_first(owned)
            except BaseException:
                close_all(owned)
                _unix.unmap(mm, whole)
                raise
        _stream.no_sigpipe(owned[0])
        self._pipe = owned[0]
        self._free = list(range(self._slots - 1, -1, -1))  # pop() gives slot 0 first
        self._flight = bytearray(self._slots)
        self._acks = bytearray((self._slots + 1) * WORD)
        self._poller = _stream.poller(sock, _POLLIN)
        self._mm, self._whole = mm, whole
        return mm

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
        free = self._free
        slot = free.pop() if free else self._acquire(timeout)
        start = slot * self._stride
        try:
            mm[start : start + length] = data
        except BaseException:
            free.append(slot)
            raise
        # The record: from now on the slot is the reader's.  (In line: a Python call
        # costs a tenth of a small message.)
        self._flight[slot] = 1
        try:
            if _GETSIGNAL(_SIGPIPE) == _SIG_IGN:  # as Python starts: EPIPE, no signal
                _WRITE(self._pipe, _RECORD(slot, length))
            else:
                _stream.write_without_sigpipe(self._pipe, _RECORD(slot, length))
        except BrokenPipeError:
            raise self._gone() from None

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

    def _acquire(self, timeout: float | None) -> int:
        """A free slot, once the reader gives one back; TimeoutError at the deadline."""
        sock = self._live()
        deadline = _stream.deadline(timeout)
        free = self._free
        while True:
            self._collect(sock)
            if self._parked:
                self._unpark()
            if free:
                return free.pop()
            if not self._flight.count(1):
                raise BufferError(
                    f"every slot of {self._name!r} is held by a view that outlived its "
                    "reserve() block: none can come free until one of them is gone"
                )
            assert self._poller is not None
            _stream.wait(self._poller, deadline, f"no free slot (all {self._slots} are in flight)")

    def _collect(self, sock: "_socket.socket") -> None:
        """Take in every acknowledgement queued now; none are waited for."""
        acks, have = self._acks, self._have
        while True:
            try:
                count = _RECV_INTO(sock, memoryview(acks)[have:], 0, DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ECONNRESET:
                    raise
                count = 0
            if not count:
                raise self._break(
                    BrokenPipeError(errno.EPIPE, f"the reader of {self._name!r} is gone")
                )
            have += count
            whole = have - have % WORD
            flight, free, slots = self._flight, self._free, self._slots
            for slot in memoryview(acks)[:whole].cast("Q"):
                if slot >= slots or not flight[slot]:
                    raise self._break(
                        ChannelError(
                            f"the reader of {self._name!r} gave back slot {slot}, which it "
                            "does not hold"
                        )
                    )
                flight[slot] = 0
                free.append(slot)
            acks[: have - whole] = acks[whole:have]
            self._have = have = have - whole

    def _gone(self) -> BaseException:
        return self._break(BrokenPipeError(errno.EPIPE, f"the reader of {self._name!r} is gone"))

    def _unpark(self) -> None:
        keep = []
        for slot, base in self._parked:
            try:
                base.release()
            except BufferError:
                keep.append((slot, base))
            else:
                self._free.append(slot)
        self._parked[:] = keep


@final
class Reservation:
    """What :meth:`~anonshm.ChannelWriter.reserve` returns: a ``with`` block around one slot."""

    __slots__ = ("_base", "_buf", "_size", "_slot", "_timeout", "_writer")

    def __init__(self, writer: ChannelWriter, size: int, timeout: float | None) -> None:
        self._writer = writer
        self._size = size
        self._timeout = timeout
        self._slot = -1
        self._base: memoryview | None = None
        self._buf: memoryview | None = None

    def __enter__(self) -> memoryview:
        writer = self._writer
        if self._slot >= 0:
            raise ValueError("this reserve() block is already entered")
        if writer._mm is None:
            writer._begin()
        whole = writer._whole
        assert whole is not None
        free = writer._free
        slot = free.pop() if free else writer._acquire(self._timeout)
        try:
            start = slot * writer._stride
            base = whole[start : start + self._size]
            # The view handed out holds an export of `base`: while it, or any view
            # made from it, lives, base.release() is refused (see ChannelReader.view).
            buf = memoryview(PickleBuffer(base))
        except BaseException:
            free.append(slot)
            raise
        self._slot, self._base, self._buf = slot, base, buf
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
        writer, slot, base, buf = self._writer, self._slot, self._base, self._buf
        if slot < 0 or base is None or buf is None:
            return
        self._slot, self._base, self._buf = -1, None, None
        try:
            buf.release()
        except BufferError:
            pass  # a consumer holds an export of it: base.release() below says so
        try:
            base.release()
        except BufferError:
            writer._parked.append((slot, base))
            if exc_type is None:
                raise BufferError(
                    "a view of the reserved buffer outlives the reserve() block, so the "
                    "message was not sent; the slot is used again once that view is gone"
                ) from None
            return
        if exc_type is not None:
            writer._free.append(slot)
            return
        # The record, as write() sends it.
        writer._flight[slot] = 1
        try:
            if _GETSIGNAL(_SIGPIPE) == _SIG_IGN:
                _WRITE(writer._pipe, _RECORD(slot, self._size))
            else:
                _stream.write_without_sigpipe(writer._pipe, _RECORD(slot, self._size))
        except BrokenPipeError:
            raise writer._gone() from None


def _contiguous(data: object) -> memoryview:
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("data must be C-contiguous (a slice with a step is not: copy it)")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


join(ChannelWriter)
