"""The worker side of the streaming benchmark: one long-lived process per contender and size.

Started by ``_streaming`` as a multiprocessing (spawn) Process whose target is
:func:`main`.  It receives messages by its contender's route and does the same work on
every message whatever the route: it copies the whole message into a reused buffer
(``sink[:n] = message``, one ``memcpy`` that reads every byte).  The parent drives it
through a control connection, outside the route being measured:

* ``("throughput", count)``: take ``count`` messages as fast as they come, then answer
  ``(bytes taken, crc32 of the start of the last one)``;
* ``("latency", count)``: take ``count`` messages one by one; after each, answer the
  one-way latency in ns (now minus the ``perf_counter_ns`` stamp in the first 8 bytes,
  taken once the copy is done; ``perf_counter`` is ``CLOCK_MONOTONIC``, one clock for
  every process of the machine);
* ``("echo", count)``: send each message straight back on the route's return path;
* ``("size", size, transport)``: set up for messages of another size;
* ``("stop",)`` (or the parent gone): return.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import zlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.queues import Queue

    from anonshm import AnonymousMemory, ChannelReader, ChannelWriter, MemoryMap

    Handler = Callable[[memoryview | bytes | bytearray], int]
    Receive = Callable[[Handler], int]

DONE: Final = struct.Struct("<QI")  # bytes taken, crc32 of the start of the last message
STAMP: Final = struct.Struct("<q")  # perf_counter_ns, the first 8 bytes of a timed message
HEADER: Final = struct.Struct("<Q")  # the length prefix of the raw pipe and socket routes
RECORD: Final = struct.Struct("<QQ")  # the floor's (slot, length)
CHECKED: Final = 64 * 1024  # how much of the last message the answer's crc32 covers
BUFFERING: Final = 64 * 1024  # the raw routes' read buffer (a pipe's capacity)
MAPS: list[MemoryMap] = []  # the floor's map, until the worker changes size


def checksum(data: memoryview | bytes | bytearray, length: int) -> int:
    return zlib.crc32(memoryview(data)[: min(length, CHECKED)])


def _stream_reader(fd: int, size: int) -> Receive:
    """Length-prefixed messages from a pipe or socket, through one 64 KiB read buffer."""
    stream = io.BufferedReader(io.FileIO(fd, closefd=False), BUFFERING)
    received = memoryview(bytearray(max(size, 1)))
    read, readinto, unpack = stream.read, stream.readinto, HEADER.unpack

    def receive(handle: Handler) -> int:
        header = read(HEADER.size)
        if len(header) < HEADER.size:
            raise EOFError
        (length,) = unpack(header)
        body = received[:length]
        if readinto(body) != length:
            raise EOFError
        return handle(body)

    return receive


def _receiver(route: str, transport: tuple[object, ...], size: int) -> Receive:
    """How this route takes one message and hands it to ``handle``."""
    if route in ("channel", "channel-view"):
        reader: ChannelReader = transport[0]  # type: ignore[assignment]
        if route == "channel":
            read = reader.read

            def channel(handle: Handler) -> int:
                return handle(read())

            return channel
        view = reader.view

        def channel_view(handle: Handler) -> int:
            with view() as buf:
                return handle(buf)

        return channel_view
    if route == "pipe":
        conn: Connection = transport[0]  # type: ignore[assignment]
        recv_bytes = conn.recv_bytes

        def pipe(handle: Handler) -> int:
            return handle(recv_bytes())

        return pipe
    if route == "queue":
        inbox: Queue[bytes] = transport[0]  # type: ignore[assignment]
        get = inbox.get

        def queue(handle: Handler) -> int:
            return handle(get())

        return queue
    if route in ("os-pipe", "socket", "pickle"):
        holder = transport[0]
        fd = holder.fileno()  # type: ignore[attr-defined]
        if route != "pickle":
            return _stream_reader(fd, size)
        stream = open(fd, "rb", closefd=False)  # noqa: SIM115 - lives as long as the worker
        load = pickle.load

        def unpickle(handle: Handler) -> int:
            return handle(load(stream))

        return unpickle
    if route == "memory":
        from anonshm import AnonymousMemory

        sock: socket.socket = transport[0]  # type: ignore[assignment]

        def memory(handle: Handler) -> int:
            mem = AnonymousMemory.receive(sock)
            with mem, mem.map() as mapped:
                return handle(mapped.buf)

        return memory
    if route == "floor":
        return _floor(transport)
    raise ValueError(f"unknown route {route!r}")


def _floor(transport: tuple[object, ...]) -> Receive:
    """Slots of a memory mapped once on both sides, a record per message: nothing else."""
    mem: AnonymousMemory = transport[0]  # type: ignore[assignment]
    records = transport[1].fileno()  # type: ignore[attr-defined]
    acks = transport[2].fileno()  # type: ignore[attr-defined]
    stride: int = transport[3]  # type: ignore[assignment]
    mapped = mem.map(populate=True)  # faulted in before any clock, as the parent's
    MAPS.append(mapped)
    region = mapped.buf
    read, write, unpack, pack = os.read, os.write, RECORD.unpack, HEADER.pack

    def floor(handle: Handler) -> int:
        record = read(records, RECORD.size)  # written whole (< PIPE_BUF): read whole
        if len(record) < RECORD.size:
            raise EOFError
        slot, length = unpack(record)
        start = slot * stride
        result = handle(region[start : start + length])
        write(acks, pack(slot))
        return result

    return floor


def _sender(route: str, transport: tuple[object, ...]) -> Callable[[bytes], None]:
    """The return path of a round trip (ECHO)."""
    if route == "channel":
        writer: ChannelWriter = transport[1]  # type: ignore[assignment]
        return writer.write
    if route == "pipe":
        conn: Connection = transport[1]  # type: ignore[assignment]
        return conn.send_bytes
    if route == "os-pipe":
        fd = transport[1].fileno()  # type: ignore[attr-defined]
        write = os.write

        def raw(data: bytes) -> None:
            write(fd, data)  # 64 bytes: one atomic write (< PIPE_BUF)

        return raw
    raise ValueError(f"no round trip for route {route!r}")


def main(route: str, control: Connection, transport: tuple[object, ...], size: int) -> None:
    """The worker's life: set up for ``size``, say ready, obey commands until ``stop``.

    A command ``("size", size, transport)`` sets the worker up for another size, with
    the route's new ends (a channel's slot size is fixed) or None to keep the ones it has.
    """
    perf_counter_ns = time.perf_counter_ns
    unpack_from = STAMP.unpack_from
    while True:
        sink = memoryview(bytearray(max(size, 1)))
        last = [0]

        def consume(
            message: memoryview | bytes | bytearray, sink: memoryview = sink, last: list[int] = last
        ) -> int:
            length = len(message)
            sink[:length] = message
            last[0] = length
            return length

        def timed(message: memoryview | bytes | bytearray, sink: memoryview = sink) -> int:
            (stamp,) = unpack_from(message)
            length = len(message)
            sink[:length] = message
            return int(perf_counter_ns() - stamp)

        receive = _receiver(route, transport, size)
        control.send_bytes(b"ready")
        while True:
            try:
                command = control.recv()
            except EOFError:
                return
            mode = command[0]
            if mode == "stop":
                return
            if mode == "size":
                _, size, new = command
                if new is not None:
                    while MAPS:
                        MAPS.pop().close()
                    _close(transport)
                    transport = new
                break
            count = command[1]
            if mode == "echo":
                _echo(route, transport, count)
                control.send_bytes(b"done")
            elif mode == "throughput":
                total = 0
                for _ in range(count):
                    total += receive(consume)
                control.send_bytes(DONE.pack(total, checksum(sink, last[0])))
            else:
                for _ in range(count):
                    control.send_bytes(STAMP.pack(receive(timed)))


def _close(transport: tuple[object, ...]) -> None:
    for end in transport:
        close = getattr(end, "close", None)
        if close is not None:
            close()


def _echo(route: str, transport: tuple[object, ...], count: int) -> None:
    send = _sender(route, transport)
    if route == "channel":
        reader: ChannelReader = transport[0]  # type: ignore[assignment]
        read = reader.read
        for _ in range(count):
            send(read())
    elif route == "pipe":
        conn: Connection = transport[0]  # type: ignore[assignment]
        recv_bytes = conn.recv_bytes
        for _ in range(count):
            send(recv_bytes())
    else:
        fd = transport[0].fileno()  # type: ignore[attr-defined]
        read_fd = os.read
        for _ in range(count):
            send(read_fd(fd, 64))
