"""Scenarios 5 and 6: a stream of messages to a long-lived worker, by every route; slots.

Every contender gets its own worker process (``_stream_worker``, started with
multiprocessing's spawn method for every route, so the start is the same for all),
which copies each whole message into a reused buffer: the same work on every byte,
whatever the route.  Workers live for one message size (a channel's slot size is
fixed), and all of a size's workers are started at once, before any clock.

* **Throughput**: the parent sends ``count`` messages back to back (the data held as
  ``bytes``); the clock stops when the worker's answer (bytes taken, checksum) is in.
* **One-way latency**: one message at a time, each stamped with ``perf_counter_ns``
  in its first 8 bytes when the parent starts sending it; the worker takes the time
  once it has copied the whole message.  p50 and p99 per round; tables show their
  medians over rounds.
* **Round trip**: 64 bytes there and back, each direction its own channel or pipe.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import statistics
import time
import zlib
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Final, Protocol

import _handoffs
import _stream_worker as worker
from _harness import PAGE, Case, Sample, human, seconds

import anonshm
from anonshm._channel import DEFAULT_SLOTS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from multiprocessing.context import SpawnContext, SpawnProcess

    from _harness import Trial

NAME: Final = "anonshm-stream"
PATTERN: Final = bytes(range(256)) * 256  # 64 KiB that is not all zeros
PIPE: Final = "mp.Pipe send/recv_bytes"
TIMEOUT: Final = 120.0
# A channel gets the default slots while they take at most this much memory, else
# fewer (at least two): 64 slots of 256 MiB would be 16 GiB.
CHANNEL_BUDGET: Final = 64 * 1024 * 1024


def slots_for(size: int) -> int:
    stride = -(-size // PAGE) * PAGE
    if DEFAULT_SLOTS * stride <= CHANNEL_BUDGET:
        return DEFAULT_SLOTS
    return max(2, CHANNEL_BUDGET // stride)


def payload(size: int) -> bytes:
    return (PATTERN * -(-size // len(PATTERN)))[:size]


def _ctx() -> SpawnContext:
    return multiprocessing.get_context("spawn")


def _write_all(fd: int, header: bytes, data: bytes | bytearray) -> None:
    """Write ``header`` then ``data`` to a pipe or socket: one ``writev``, more if partial."""
    done = os.writev(fd, [header, data])
    total = len(header) + len(data)
    if done < total:
        rest = memoryview(data)[done - len(header) :] if done >= len(header) else None
        if rest is None:
            os.write(fd, header[done:])  # never seen: a pipe takes 8 bytes whole
            rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest) :]


# --- the parent's end of each route ------------------------------------------------------


class _Closes(Protocol):
    def close(self) -> None: ...


class Route:
    """The parent's end of one contender's route.

    ``setup(size)`` makes the route ready for messages of ``size`` bytes and returns
    the worker's new ends, or None where the worker keeps the ones it has (only a
    channel, whose slot size is fixed, and the floor need new ones per size).
    """

    route = ""
    opened = False
    send: Callable[[bytes | bytearray], None]  # one message, whole

    def setup(self, size: int) -> tuple[object, ...] | None:
        if self.opened:
            return None
        self.opened = True
        return self.open(size)

    def open(self, size: int) -> tuple[object, ...]:
        raise NotImplementedError

    def started(self) -> None:
        """Close this process's copies of what the worker now holds."""

    def close(self) -> None:
        raise NotImplementedError


class ChannelRoute(Route):
    """``writer.write(data)``, or ``reserve`` + a copy into the slot (zero-copy)."""

    def __init__(self, zero_copy: bool, slots: int | None = None) -> None:
        self.route = "channel-view" if zero_copy else "channel"
        self.slots = slots
        self.zero_copy = zero_copy

    def setup(self, size: int) -> tuple[object, ...] | None:
        if self.opened:
            self.close()
        self.opened = True
        return self.open(size)

    def open(self, size: int) -> tuple[object, ...]:
        slots = self.slots or slots_for(size)
        self.reader, self.writer = anonshm.channel(max(size, 1), slots=slots, name=NAME)
        if self.zero_copy:
            reserve = self.writer.reserve

            def send(data: bytes | bytearray) -> None:
                with reserve(len(data)) as buf:
                    buf[:] = data

            self.send = send
        else:
            self.send = self.writer.write
        return (self.reader,)

    def started(self) -> None:
        self.reader.close()

    def close(self) -> None:
        self.writer.close()


class PipeRoute(Route):
    route = "pipe"

    def open(self, size: int) -> tuple[object, ...]:
        self.theirs, self.mine = _ctx().Pipe(duplex=False)
        self.send = self.mine.send_bytes
        return (self.theirs,)

    def started(self) -> None:
        self.theirs.close()

    def close(self) -> None:
        self.mine.close()


class QueueRoute(Route):
    route = "queue"

    def open(self, size: int) -> tuple[object, ...]:
        self.queue: multiprocessing.Queue[bytes | bytearray] = _ctx().Queue()
        self.send = self.queue.put
        return (self.queue,)

    def close(self) -> None:
        self.queue.close()
        self.queue.join_thread()


class RawRoute(Route):
    """A length prefix and the bytes, ``writev`` to an ``os.pipe`` or a socket pair."""

    def __init__(self, kind: str) -> None:
        self.route = kind

    def open(self, size: int) -> tuple[object, ...]:
        theirs: _Closes
        if self.route == "socket":
            self.sock, theirs = socket.socketpair()
            fd = self.sock.fileno()
        else:
            read_end, fd = os.pipe()
            theirs = Connection(read_end)  # multiprocessing then sends the descriptor
        self.theirs, self.fd, pack = theirs, fd, worker.HEADER.pack

        def send(data: bytes | bytearray) -> None:
            _write_all(fd, pack(len(data)), data)

        self.send = send
        return (theirs,)

    def started(self) -> None:
        self.theirs.close()

    def close(self) -> None:
        if self.route == "socket":
            self.sock.close()
        else:
            os.close(self.fd)


class MemoryRoute(Route):
    """A fresh anonshm memory per message: create, map, copy in, ``send()``, close."""

    route = "memory"

    def open(self, size: int) -> tuple[object, ...]:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.theirs = theirs
        sock, memory = self.sock, anonshm.AnonymousMemory

        def send(data: bytes | bytearray) -> None:
            with memory(len(data), name=NAME) as mem:
                with mem.map() as mapped:
                    mapped.buf[:] = data
                mem.send(sock)

        self.send = send
        return (theirs,)

    def started(self) -> None:
        self.theirs.close()

    def close(self) -> None:
        self.sock.close()


class PickleRoute(Route):
    route = "pickle"

    def open(self, size: int) -> tuple[object, ...]:
        read_end, write_end = os.pipe()
        self.theirs = Connection(read_end)
        self.stream = stream = open(write_end, "wb")  # noqa: SIM115 - closed by close()
        dump, flush, protocol = pickle.dump, stream.flush, pickle.HIGHEST_PROTOCOL

        def send(data: bytes | bytearray) -> None:
            dump(data, stream, protocol=protocol)
            flush()

        self.send = send
        return (self.theirs,)

    def started(self) -> None:
        self.theirs.close()

    def close(self) -> None:
        self.stream.close()


class FloorRoute(Route):
    """The floor: slots of one memory mapped (and faulted in) on both sides before any
    clock, a 16-byte record per message on one raw pipe, an 8-byte ack back on another.

    What any shared-memory stream must do at the least: copy in, tell, copy out, give back.
    """

    route = "floor"

    def setup(self, size: int) -> tuple[object, ...] | None:
        if self.opened:
            self.close()
        self.opened = True
        return self.open(size)

    def open(self, size: int) -> tuple[object, ...]:
        self.slots = slots = slots_for(size)
        self.stride = stride = -(-max(size, 1) // PAGE) * PAGE
        self.mem = anonshm.AnonymousMemory(slots * stride, name=NAME)
        self.mapped = self.mem.map(populate=True)
        records, self.records = os.pipe()
        self.acks, acks = os.pipe()
        self.theirs = (Connection(records), Connection(acks))
        self.free = list(range(slots))
        region, free, record = self.mapped.buf, self.free, worker.RECORD.pack
        ack_fd, record_fd, word = self.acks, self.records, worker.HEADER.size

        def send(data: bytes | bytearray) -> None:
            if not free:
                got = os.read(ack_fd, slots * word)
                free.extend(memoryview(got).cast("Q"))
            slot = free.pop()
            start = slot * stride
            region[start : start + len(data)] = data
            os.write(record_fd, record(slot, len(data)))

        self.send = send
        return (self.mem, *self.theirs, stride)

    def started(self) -> None:
        for end in self.theirs:
            end.close()

    def close(self) -> None:
        os.close(self.records)
        os.close(self.acks)
        self.mapped.close()
        self.mem.close()


# --- round trips ---------------------------------------------------------------------------


class EchoRoute(Route):
    """There on one channel or pipe, back on another; ``round_trip_trial`` times one."""

    receive: Callable[[], bytes]

    def __init__(self, kind: str) -> None:
        self.route = kind

    def open(self, size: int) -> tuple[object, ...]:
        if self.route == "channel":
            there_r, there_w = anonshm.channel(size, slots=DEFAULT_SLOTS, name=NAME)
            back_r, back_w = anonshm.channel(size, slots=DEFAULT_SLOTS, name=NAME)
            self.theirs: tuple[_Closes, ...] = (there_r, back_w)
            self.mine: tuple[_Closes, ...] = (there_w, back_r)
            self.send, self.receive = there_w.write, back_r.read
        elif self.route == "pipe":
            pipe_r, pipe_w = _ctx().Pipe(duplex=False)
            reply_r, reply_w = _ctx().Pipe(duplex=False)
            self.theirs, self.mine = (pipe_r, reply_w), (pipe_w, reply_r)
            self.send, self.receive = pipe_w.send_bytes, reply_r.recv_bytes
        else:
            raw_r, raw_w = os.pipe()
            raw_back_r, raw_back_w = os.pipe()
            self.theirs = (Connection(raw_r), Connection(raw_back_w))
            self.mine = (Connection(raw_w), Connection(raw_back_r))

            def send(data: bytes | bytearray) -> None:
                os.write(raw_w, data)  # 64 bytes: one atomic write (< PIPE_BUF)

            def receive() -> bytes:
                return os.read(raw_back_r, size)

            self.send, self.receive = send, receive
        return self.theirs

    def started(self) -> None:
        for end in self.theirs:
            end.close()

    def close(self) -> None:
        for end in self.mine:
            end.close()


# --- workers ---------------------------------------------------------------------------------


class Worker:
    """One contender's long-lived worker process, and the parent's end of its route."""

    def __init__(self, name: str, route: Route, size: int) -> None:
        self.name, self.route, self.size = name, route, size
        ctx = _ctx()
        self.control, theirs = ctx.Pipe()
        try:
            transport = route.setup(size)
            self.process: SpawnProcess = ctx.Process(
                target=worker.main, args=(route.route, theirs, transport, size), daemon=True
            )
            self.process.start()
        finally:
            theirs.close()
        assert self.process.pid is not None
        _handoffs.pin_worker(self.process.pid)  # with --pin only

    def ready(self) -> None:
        if self.answer() != b"ready":
            raise RuntimeError(f"{self.name}: the worker did not start")
        self.route.started()

    def resize(self, size: int) -> None:
        """Set the worker up for messages of ``size`` bytes (``ready()`` waits for it)."""
        self.size = size
        self.control.send(("size", size, self.route.setup(size)))

    def command(self, mode: str, count: int) -> None:
        self.control.send((mode, count))

    def answer(self) -> bytes:
        # Poll, so that a worker that died is an error now, not a two-minute hang.
        deadline = time.monotonic() + TIMEOUT
        while not self.control.poll(0.5):
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the worker did not answer")
        return self.control.recv_bytes()

    def close(self) -> None:
        try:
            self.control.send(("stop",))
        except OSError:
            pass
        self.route.close()
        self.process.join(TIMEOUT)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        self.process.close()
        self.control.close()


class Pool:
    """Long-lived workers by contender name: started once, set up again for each size."""

    def __init__(self) -> None:
        self.workers: dict[str, Worker] = {}

    def ready(
        self, contenders: Sequence[tuple[str, Callable[[], Route]]], size: int
    ) -> list[Worker]:
        """The named contenders' workers, set up for ``size``; new ones start meanwhile."""
        found: list[Worker] = []
        for name, make in contenders:
            one = self.workers.get(name)
            if one is None:
                one = self.workers[name] = Worker(name, make(), size)
            else:
                one.resize(size)
            found.append(one)
        for one in found:
            one.ready()
        return found

    def close(self) -> None:
        workers, self.workers = list(self.workers.values()), {}
        for one in workers:
            one.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def contenders(size: int) -> list[tuple[str, Callable[[], Route]]]:
    found: list[tuple[str, Callable[[], Route]]] = [
        ("channel write/read", lambda: ChannelRoute(zero_copy=False)),
        ("channel reserve/view", lambda: ChannelRoute(zero_copy=True)),
        (PIPE, PipeRoute),
        ("mp.Queue put/get", QueueRoute),
        ("os.pipe, length-prefixed", lambda: RawRoute("os-pipe")),
        ("socketpair, length-prefixed", lambda: RawRoute("socket")),
        ("anonshm memory per message", MemoryRoute),
        ("pickle through os.pipe", PickleRoute),
    ]
    if size >= 1024 * 1024:
        found.append(("floor: mapped slots, raw pipes", FloorRoute))
    return found


# --- trials ------------------------------------------------------------------------------------


def throughput_trial(one: Worker, data: bytes, count: int) -> Trial:
    expected = worker.DONE.pack(count * len(data), worker.checksum(data, len(data)))

    def trial() -> Sample:
        send = one.route.send
        one.command("throughput", count)
        start = time.perf_counter()
        for _ in range(count):
            send(data)
        got = one.answer()
        elapsed = time.perf_counter() - start
        if got != expected:
            raise RuntimeError(f"{one.name}: the worker took {worker.DONE.unpack(got)}")
        return {"time": elapsed / count}

    return trial


def _percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    return statistics.median(values), statistics.quantiles(values, n=100, method="inclusive")[98]


def latency_trial(one: Worker, data: bytes, count: int) -> Trial:
    stamped = bytearray(data)
    pack_into, clock, unpack = worker.STAMP.pack_into, time.perf_counter_ns, worker.STAMP.unpack

    def trial() -> Sample:
        send, answer = one.route.send, one.answer
        one.command("latency", count)
        delays: list[float] = []
        for _ in range(count):
            pack_into(stamped, 0, clock())
            send(stamped)
            delays.append(unpack(answer())[0] * 1e-9)
        p50, p99 = _percentiles(delays)
        return {"time": p50, "p99": p99}

    return trial


def round_trip_trial(one: Worker, count: int) -> Trial:
    message = payload(one.size)

    def trial() -> Sample:
        route = one.route
        assert isinstance(route, EchoRoute)
        send, receive, clock = route.send, route.receive, time.perf_counter_ns
        one.command("echo", count)
        times: list[float] = []
        for _ in range(count):
            start = clock()
            send(message)
            got = receive()
            times.append((clock() - start) * 1e-9)
            if len(got) != len(message):
                raise RuntimeError(f"{one.name}: {len(got)} bytes came back")
        if one.answer() != b"done":
            raise RuntimeError(f"{one.name}: the echo did not end")
        p50, p99 = _percentiles(times)
        return {"time": p50, "p99": p99}

    return trial


def round_trip_contenders() -> list[tuple[str, Callable[[], Route]]]:
    return [
        ("two channels (write/read)", lambda: EchoRoute("channel")),
        ("two os.pipe pairs", lambda: EchoRoute("os-pipe")),
        ("two mp.Pipe (send/recv_bytes)", lambda: EchoRoute("pipe")),
    ]


def floor_copy(size: int, rounds: int) -> float:
    """The median time of one in-process copy of ``size`` bytes between two maps.

    Both are mapped and faulted in first: what a zero-copy stream's one unavoidable
    pass over the bytes costs, with nothing else.
    """
    with (
        anonshm.AnonymousMemory(size) as one,
        anonshm.AnonymousMemory(size) as two,
        one.map(populate=True) as source,
        two.map(populate=True) as target,
    ):
        source.buf[:] = payload(size)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            target.buf[:] = source.buf
            times.append(time.perf_counter() - start)
        if zlib.crc32(target.buf[:4096]) != zlib.crc32(source.buf[:4096]):
            raise RuntimeError("the copy went wrong")
    return statistics.median(times)


# --- tables ---------------------------------------------------------------------------------------


def print_throughput(case: Case, size: int) -> None:
    print(f"-- {case.case} ({case.notes[0] if case.notes else ''})")
    print(
        f"   {'contender':<31}{'per msg':>10}{'q1':>10}{'q3':>10}{'msg/s':>11}{'GB/s':>8}  vs Pipe"
    )
    pipe = case.median(PIPE)
    for name in case.samples:
        median = case.median(name)
        q1, q3 = case.spread(name)
        print(
            f"   {name:<31}{seconds(median):>10}{seconds(q1):>10}{seconds(q3):>10}"
            f"{1 / median:>11.4g}{size / median / 1e9:>8.3g}  {pipe / median:6.2f}x"
        )
    for note in case.notes[1:]:
        print(f"   note: {note}")


def print_latency(case: Case, reference: str) -> None:
    print(f"-- {case.case}")
    print(f"   {'contender':<31}{'p50':>10}{'p99':>10}{'p50 q1':>10}{'p50 q3':>10}  vs {reference}")
    base = case.median(reference)
    for name in case.samples:
        q1, q3 = case.spread(name)
        median = case.median(name)
        print(
            f"   {name:<31}{seconds(median):>10}{seconds(case.median(name, 'p99')):>10}"
            f"{seconds(q1):>10}{seconds(q3):>10}  {median / base:6.2f}x"
        )
    for note in case.notes:
        print(f"   note: {note}")


def print_slots(case: Case, size: int, counts: Sequence[int]) -> None:
    print(f"-- {case.case} ({'; '.join(case.notes)})")
    print(
        f"   {'slots':>6}{'memory':>10}{'write/read msg/s':>18}{'vs Pipe':>9}"
        f"{'reserve/view msg/s':>20}{'vs Pipe':>9}"
    )
    pipe = case.median(PIPE)
    stride = -(-size // PAGE) * PAGE
    for slots in counts:
        copy = case.median(f"slots={slots} write/read")
        view = case.median(f"slots={slots} reserve/view")
        print(
            f"   {slots:>6}{human(slots * stride):>10}{1 / copy:>18.4g}{pipe / copy:>8.2f}x"
            f"{1 / view:>20.4g}{pipe / view:>8.2f}x"
        )
    print(f"   {PIPE}: {1 / pipe:.4g} msg/s")
