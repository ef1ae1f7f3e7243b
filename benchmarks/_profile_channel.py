"""``run.py --profile``, channels: what one message costs each end, piece by piece.

Both ends live in this process, so a message's cost is the Python and the system calls
of each end with no wake-up of another process in it (the streaming scenario has
those).  The writer's side is timed over ``slots`` messages at a time, every slot free
at the start, a quarter of the slots at a time (one write in ``slots / 2`` also takes
the acknowledgements in); the reader's over the same messages (one ``readv`` per
batch, an acknowledgement ``send`` per half of the slots).  Then the pieces those calls
are made of, one by one, and cProfile of both loops.  The pieces reach into anonshm's
private names on purpose; one that no longer exists is reported as unavailable.
"""

from __future__ import annotations

import cProfile
import gc
import importlib
import io
import os
import pstats
import statistics
import struct
import time
from typing import TYPE_CHECKING, Final

from _harness import seconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from anonshm import ChannelReader, ChannelWriter

REPEAT: Final = 7
BATCHES: Final = 300
SLOTS: Final = 64


def _sides(
    size: int, write: Callable[[], object], read: Callable[[], object], slots: int
) -> tuple[float, float]:
    """Median per-message time of ``write`` and of ``read``, over REPEAT runs of BATCHES.

    A batch is a quarter of the slots: the reader gives slots back per half, and a view's
    slot only at the next call, so the writer (in this same thread) never waits.
    """
    batch = slots // 4
    writes, reads = [], []
    for _ in range(REPEAT):
        gc.collect()
        gc.disable()
        try:
            spent_w = spent_r = 0.0
            for _ in range(BATCHES):
                start = time.perf_counter()
                for _ in range(batch):
                    write()
                middle = time.perf_counter()
                for _ in range(batch):
                    read()
                spent_w += middle - start
                spent_r += time.perf_counter() - middle
        finally:
            gc.enable()
        writes.append(spent_w / (BATCHES * batch))
        reads.append(spent_r / (BATCHES * batch))
    return statistics.median(writes), statistics.median(reads)


def _per_call(operation: Callable[[], object], number: int = 20000) -> float:
    results = []
    for _ in range(REPEAT):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(number):
                operation()
            results.append((time.perf_counter() - start) / number)
        finally:
            gc.enable()
    return statistics.median(results)


def _row(label: str, value: float) -> None:
    print(f"   {label:<62} {seconds(value):>10}")


def _piece(label: str, operation: Callable[[], object], number: int = 20000) -> float:
    try:
        value = _per_call(operation, number)
    except Exception as exc:  # a private piece renamed since: say so, go on
        print(f"   {label:<62} unavailable ({type(exc).__name__}: {exc})")
        return float("nan")
    _row(label, value)
    return value


def _ends(size: int, slots: int = SLOTS) -> tuple[ChannelReader, ChannelWriter]:
    import anonshm

    reader, writer = anonshm.channel(size, slots=slots, name="profile")
    # The memory and the pipe exist from here on; half the slots read, the reader has
    # given back all it holds, so every slot is free again.
    for _ in range(max(1, slots // 2)):
        writer.write(b"x")
        reader.read()
    return reader, writer


def calls(size: int) -> None:
    """write/read and reserve/view per message, beside the raw calls they make."""
    data = bytes(size)
    sink = memoryview(bytearray(size))
    print(f"\n== channel, {size} B messages, {SLOTS} slots, both ends in this process ==")
    reader, writer = _ends(size)
    with reader, writer:
        w, r = _sides(size, lambda: writer.write(data), reader.read, SLOTS)
        _row("writer.write(data)", w)
        _row("reader.read()", r)

        def reserve() -> None:
            with writer.reserve(size) as buf:
                buf[:] = data

        def view() -> None:
            with reader.view() as buf:
                sink[:] = buf

        w, r = _sides(size, reserve, view, SLOTS)
        _row("with writer.reserve(n) as buf: buf[:] = data", w)
        _row("with reader.view() as buf: sink[:] = buf", r)

        def read_copy() -> None:
            sink[:] = reader.read()

        w, r = _sides(size, lambda: writer.write(data), read_copy, SLOTS)
        _row("sink[:] = reader.read()  (what the streaming worker does)", r)
    _raw(size, data)


def _raw(size: int, data: bytes) -> None:
    """The system calls and copies a message is made of, alone."""
    import mmap

    record = struct.Struct("=QQ")
    print(f"   -- the pieces ({size} B), one by one")
    read_end, write_end = os.pipe()
    mm = mmap.mmap(-1, 4096 * SLOTS)
    whole = memoryview(mm)
    records = bytearray(SLOTS * 16)
    view = memoryview(records)
    try:
        # Each write is read back at once (outside nothing: both are in the row).
        def write_read_pipe() -> None:
            os.write(write_end, b"0123456789abcdef")
            os.readv(read_end, [view])

        _piece("os.write(pipe, 16 B) + os.readv(pipe) (one record, both ends)", write_read_pipe)

        def write_64() -> None:
            for _ in range(SLOTS):
                os.write(write_end, b"0123456789abcdef")
            os.readv(read_end, [view])

        per = _per_call(write_64, 500) / SLOTS
        _row(f"os.write(pipe, 16 B), {SLOTS} then one readv (per record)", per)
        _piece("RECORD.pack(slot, length)", lambda: record.pack(3, size))
        # What _post calls per message: the C half (signal.getsignal makes an enum).
        c_signal = importlib.import_module("_signal")
        getsignal: Callable[[int], object] = c_signal.getsignal
        sigpipe: int = c_signal.SIGPIPE
        _piece("_signal.getsignal(SIGPIPE)", lambda: getsignal(sigpipe))
        end = min(size, 4096 * SLOTS)

        def copy_in() -> None:
            mm[0:end] = data

        _piece(f"mm[a:b] = data ({size} B copied into the map)", copy_in)
        _piece(f"mm[a:b] ({size} B copied out as bytes)", lambda: mm[0:end])
        from _pickle import PickleBuffer

        def view_piece() -> None:
            base = whole[0:end]
            buf = memoryview(PickleBuffer(base))
            buf.release()
            base.release()

        _piece("whole[a:b] + memoryview(PickleBuffer(..)) + 2 releases", view_piece)
        left, right = __import__("socket").socketpair()
        acks = memoryview(bytearray(8 * (SLOTS // 2)))
        into = bytearray(8 * (SLOTS + 1))
        with left, right:

            def ack() -> None:
                left.sendall(acks)
                right.recv_into(into)

            _piece(f"sendall({SLOTS // 2} acks) + recv_into (once per {SLOTS // 2} msgs)", ack)
    finally:
        whole.release()
        mm.close()
        os.close(read_end)
        os.close(write_end)


def _print_stats(profiler: cProfile.Profile, lines: int = 14) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    text = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(text) if "ncalls" in line)
    for line in text[start:]:
        if line.strip():
            print("   " + line.strip()[:118])


def profile(size: int = 4096, batches: int = 12000) -> None:
    """cProfile of the writer's loop and of the reader's, apart."""
    data = bytes(size)
    reader, writer = _ends(size)
    with reader, writer:
        writing, reading = cProfile.Profile(), cProfile.Profile()
        write, read = writer.write, reader.read
        for _ in range(batches):
            writing.enable()
            for _ in range(SLOTS // 4):
                write(data)
            writing.disable()
            reading.enable()
            for _ in range(SLOTS // 4):
                read()
            reading.disable()
    count = batches * (SLOTS // 4)
    print(f"\n== cProfile: {count} x writer.write({size} B), by own time ==")
    _print_stats(writing)
    print(f"\n== cProfile: {count} x reader.read() of {size} B, by own time ==")
    _print_stats(reading)


def main() -> None:
    for size in (64, 4096):
        calls(size)
    profile()
