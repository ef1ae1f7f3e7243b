"""Scenario 2: hand N bytes to a child that reads them all, by every route we know.

The clock starts when the data is ready in the parent (written into the contender's
shared memory, or held as ``bytes`` for the pickling routes) and stops when the child
has read every byte and its answer has arrived.  Creating and filling the memory,
reaping the child and closing everything happen outside the clock, for everyone.
The reader in the child is the same function for every contender (``_child.reader``).
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
import queue
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import IO, TYPE_CHECKING, Final

import _child
from _harness import MIB, Sample

from anonshm import AnonymousMemory, spawn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from _harness import Trial

PYTHON: Final = sys.executable
CHILD: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")
NAME: Final = "anonshm-bench"
REPLY: Final = _child.REPLY
PATTERN: Final = bytes(range(256)) * (4 * 1024)  # 1 MiB that is not all zeros
TIMEOUT: Final = 120.0


@dataclass
class Payload:
    """The bytes to hand over, and the checksum a child must answer to prove it read them."""

    size: int
    data: bytes
    checksum: int

    @classmethod
    def make(cls, size: int) -> Payload:
        data = (PATTERN * -(-size // len(PATTERN)))[:size]
        return cls(size, data, _child.reader()(data))

    def fill(self, buf: memoryview) -> None:
        pattern = memoryview(PATTERN)
        for offset in range(0, self.size, len(PATTERN)):
            end = min(offset + len(PATTERN), self.size)
            buf[offset:end] = pattern[: end - offset]

    def check(self, got: int, who: str) -> None:
        if got != self.checksum:
            raise RuntimeError(f"{who}: the child read checksum {got:#x}, not {self.checksum:#x}")


def _read_reply(stream: IO[bytes] | None) -> int:
    assert stream is not None
    data = stream.read(REPLY.size)
    if len(data) != REPLY.size:
        raise RuntimeError("the child exited without answering")
    (value,) = REPLY.unpack(data)
    return int(value)


def _recv_reply(sock: socket.socket) -> int:
    data = b""
    while len(data) < REPLY.size:
        chunk = sock.recv(REPLY.size - len(data))
        if not chunk:
            raise RuntimeError("the worker hung up without answering")
        data += chunk
    (value,) = REPLY.unpack(data)
    return int(value)


def _filled_memory(payload: Payload, *, hugepages: bool = False) -> AnonymousMemory:
    mem = AnonymousMemory(payload.size, name=NAME)
    # The pages are allocated as they are first written, so the writer's advice is what
    # decides whether they are huge; a reader's map then uses them as they are.
    with mem.map(hugepages=hugepages) as view:
        payload.fill(view.buf)
    return mem


def _filled_memfd(payload: Payload) -> int:
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, payload.size)
        with mmap.mmap(fd, payload.size) as mm, memoryview(mm) as buf:
            payload.fill(buf)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _filled_shm(payload: Payload) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(create=True, size=payload.size)
    assert shm.buf is not None
    payload.fill(shm.buf)
    return shm


def _spawn_ctx() -> multiprocessing.context.SpawnContext:
    # spawn, not fork: the memory really travels (pickled with its descriptor), and
    # no thread of this process is copied into the child half-way through a lock.
    return multiprocessing.get_context("spawn")


# --- fresh child per handoff ------------------------------------------------------------


def fresh_anonshm_spawn(payload: Payload) -> Sample:
    with _filled_memory(payload) as mem:
        start = time.perf_counter()
        argv = [PYTHON, CHILD, "inherit", NAME]
        with spawn(argv, inherit=[mem], stdout=subprocess.PIPE) as child:
            got = _read_reply(child.stdout)
            elapsed = time.perf_counter() - start
    payload.check(got, "anonshm spawn")
    return {"time": elapsed}


def fresh_anonshm_token(payload: Payload) -> Sample:
    with _filled_memory(payload) as mem:
        start = time.perf_counter()
        argv = [PYTHON, CHILD, "token", mem.export()]
        with subprocess.Popen(argv, pass_fds=[mem.fileno()], stdout=subprocess.PIPE) as child:
            got = _read_reply(child.stdout)
            elapsed = time.perf_counter() - start
    payload.check(got, "anonshm token")
    return {"time": elapsed}


def fresh_anonshm_mp(payload: Payload) -> Sample:
    ctx = _spawn_ctx()
    with _filled_memory(payload) as mem:
        start = time.perf_counter()
        receiver, sender = ctx.Pipe(duplex=False)
        with receiver:
            process = ctx.Process(target=_child.mp_fresh, args=(mem, sender))
            process.start()
            sender.close()
            (got,) = REPLY.unpack(receiver.recv_bytes())
            elapsed = time.perf_counter() - start
        process.join(TIMEOUT)
        process.close()
    payload.check(got, "anonshm multiprocessing")
    return {"time": elapsed}


def fresh_raw_memfd(payload: Payload) -> Sample:
    fd = _filled_memfd(payload)
    try:
        start = time.perf_counter()
        argv = [PYTHON, CHILD, "rawfd", str(fd), str(payload.size)]
        with subprocess.Popen(argv, pass_fds=[fd], stdout=subprocess.PIPE) as child:
            got = _read_reply(child.stdout)
            elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    payload.check(got, "raw memfd")
    return {"time": elapsed}


def fresh_shm(payload: Payload) -> Sample:
    shm = _filled_shm(payload)
    try:
        start = time.perf_counter()
        argv = [PYTHON, CHILD, "shm", shm.name]
        with subprocess.Popen(argv, stdout=subprocess.PIPE) as child:
            got = _read_reply(child.stdout)
            elapsed = time.perf_counter() - start
    finally:
        shm.close()
        shm.unlink()
    payload.check(got, "SharedMemory")
    return {"time": elapsed}


def fresh_pickle_pipe(payload: Payload) -> Sample:
    start = time.perf_counter()
    argv = [PYTHON, CHILD, "pickle"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdin is not None
        pickle.dump(payload.data, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.close()
        got = _read_reply(child.stdout)
        elapsed = time.perf_counter() - start
    payload.check(got, "pickle through a pipe")
    return {"time": elapsed}


def _forked_reader(mm: mmap.mmap, answer: int, wait_for: int | None) -> None:
    # In the forked child: only system calls and the reader, then _exit (no atexit,
    # no flushing of the parent's copied buffers).
    status = 1
    try:
        read = _child.reader()
        while wait_for is None or os.read(wait_for, 1):
            os.write(answer, REPLY.pack(read(mm)))
            if wait_for is None:
                break
        status = 0
    finally:
        os._exit(status)


def fresh_fork_mmap(payload: Payload) -> Sample:
    with mmap.mmap(-1, payload.size) as mm:
        with memoryview(mm) as buf:
            payload.fill(buf)
        readable, writable = os.pipe()
        try:
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                _forked_reader(mm, writable, None)
            os.close(writable)
            writable = -1
            with open(readable, "rb", closefd=False) as stream:
                got = _read_reply(stream)
            elapsed = time.perf_counter() - start
            os.waitpid(pid, 0)
        finally:
            os.close(readable)
            if writable >= 0:
                os.close(writable)
    payload.check(got, "fork-inherited mmap")
    return {"time": elapsed}


FRESH: Final[Sequence[tuple[str, Callable[[Payload], Sample]]]] = (
    ("anonshm spawn(inherit)", fresh_anonshm_spawn),
    ("anonshm export+pass_fds", fresh_anonshm_token),
    ("anonshm mp.Process arg", fresh_anonshm_mp),
    ("raw memfd+pass_fds", fresh_raw_memfd),
    ("SharedMemory by name", fresh_shm),
    ("pickle through pipe", fresh_pickle_pipe),
    ("mmap inherited by fork", fresh_fork_mmap),
)


# --- long-lived worker ------------------------------------------------------------------

_worker_cpus: set[int] = set()


@contextmanager
def pinned_apart() -> Iterator[str]:
    """Run this process on one CPU and the long-lived workers on the others, for the block.

    Where the scheduler wakes a worker (beside its parent, or on an idle CPU that must
    first come out of sleep) otherwise decides a small handoff's time more than any
    contender does: samples of the same contender vary two-fold.  Every contender's
    worker gets the same placement.  Yields a note for the table.
    """
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        yield "not pinned (one CPU)"
        return
    before = os.sched_getaffinity(0)
    first, *rest = sorted(before)
    _worker_cpus.update(rest)
    os.sched_setaffinity(0, {first})
    try:
        yield f"this process pinned to CPU {first}, every worker to CPU {','.join(map(str, rest))}"
    finally:
        os.sched_setaffinity(0, before)
        _worker_cpus.clear()


def pin_worker(pid: int) -> None:
    if _worker_cpus:
        os.sched_setaffinity(pid, _worker_cpus)


class _SocketWorker:
    """A ``_child.py worker-*`` process at the other end of a Unix socket pair."""

    def __init__(self, stack: ExitStack, mode: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            argv = [PYTHON, CHILD, mode, str(theirs.fileno())]
            self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()])
        pin_worker(self.process.pid)
        stack.callback(self.close)

    def close(self) -> None:
        self.sock.close()  # the worker sees end-of-file and returns
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class AnonshmSocket(_SocketWorker):
    hugepages = False

    def __init__(self, stack: ExitStack) -> None:
        super().__init__(stack, "worker-anonshm")

    def __call__(self, payload: Payload) -> Sample:
        with _filled_memory(payload, hugepages=self.hugepages) as mem:
            start = time.perf_counter()
            mem.send(self.sock)
            got = _recv_reply(self.sock)
            elapsed = time.perf_counter() - start
        payload.check(got, "anonshm send/receive")
        return {"time": elapsed}


class AnonshmSocketHuge(AnonshmSocket):
    """The same, with the memory written through ``map(hugepages=True)``.

    Where ``shmem_enabled`` allows ``advise`` the memory is then on 2 MiB pages, and
    the worker maps it with 512 times fewer page-table entries (no faults to speak of,
    and an unmap that costs nothing).  Elsewhere the advice does nothing, and this is
    the plain route again.
    """

    hugepages = True


class RawSocket(_SocketWorker):
    def __init__(self, stack: ExitStack) -> None:
        super().__init__(stack, "worker-raw")

    def __call__(self, payload: Payload) -> Sample:
        fd = _filled_memfd(payload)
        try:
            start = time.perf_counter()
            socket.send_fds(self.sock, [REPLY.pack(payload.size)], [fd])
            got = _recv_reply(self.sock)
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
        payload.check(got, "raw memfd send_fds")
        return {"time": elapsed}


class ShmSocket(_SocketWorker):
    def __init__(self, stack: ExitStack) -> None:
        super().__init__(stack, "worker-shm")

    def __call__(self, payload: Payload) -> Sample:
        shm = _filled_shm(payload)
        try:
            start = time.perf_counter()
            self.sock.sendall(shm.name.encode())
            got = _recv_reply(self.sock)
            elapsed = time.perf_counter() - start
        finally:
            shm.close()
            shm.unlink()
        payload.check(got, "SharedMemory by name")
        return {"time": elapsed}


class PicklePipe:
    def __init__(self, stack: ExitStack) -> None:
        argv = [PYTHON, CHILD, "worker-pickle"]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pin_worker(self.process.pid)
        stack.callback(self.close)

    def close(self) -> None:
        with self.process:  # closes the pipes (the worker sees end-of-file), then waits
            pass

    def __call__(self, payload: Payload) -> Sample:
        stdin = self.process.stdin
        assert stdin is not None
        start = time.perf_counter()
        pickle.dump(payload.data, stdin, protocol=pickle.HIGHEST_PROTOCOL)
        stdin.flush()
        got = _read_reply(self.process.stdout)
        elapsed = time.perf_counter() - start
        payload.check(got, "pickle through a pipe")
        return {"time": elapsed}


class _QueueWorker:
    def __init__(self, stack: ExitStack) -> None:
        ctx = _spawn_ctx()
        self.inbox: multiprocessing.Queue[object] = ctx.Queue()
        self.outbox: multiprocessing.Queue[int] = ctx.Queue()
        self.process = ctx.Process(target=_child.mp_worker, args=(self.inbox, self.outbox))
        self.process.start()
        assert self.process.pid is not None
        pin_worker(self.process.pid)
        stack.callback(self.close)

    def answer(self) -> int:
        # Poll, so that a worker that died is an error now, not a two-minute hang.
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return self.outbox.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the multiprocessing worker did not answer") from None

    def close(self) -> None:
        self.inbox.put(None)
        self.process.join(TIMEOUT)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        self.process.close()
        for channel in (self.inbox, self.outbox):
            channel.close()
            channel.join_thread()


class AnonshmQueue(_QueueWorker):
    def __call__(self, payload: Payload) -> Sample:
        with _filled_memory(payload) as mem:
            start = time.perf_counter()
            self.inbox.put(mem)
            got = self.answer()
            elapsed = time.perf_counter() - start
        payload.check(got, "anonshm through mp.Queue")
        return {"time": elapsed}


class PickleQueue(_QueueWorker):
    def __call__(self, payload: Payload) -> Sample:
        start = time.perf_counter()
        self.inbox.put(payload.data)
        got = self.answer()
        elapsed = time.perf_counter() - start
        payload.check(got, "bytes through mp.Queue")
        return {"time": elapsed}


class ForkMmap:
    """A worker forked with a shared anonymous mapping; each round reuses that mapping.

    This is the lower bound: nothing is handed over at all, and after the first round
    the worker's page tables already cover the region (no page faults).  A worker is
    forked per size, since the region's size is fixed at fork.
    """

    def __init__(self, stack: ExitStack) -> None:
        self.size = 0
        self.pid = 0
        self.mm: mmap.mmap | None = None
        self.go = self.answers = -1
        stack.callback(self.close)

    def close(self) -> None:
        if self.pid:
            os.close(self.go)  # the worker's read sees end-of-file and it exits
            os.waitpid(self.pid, 0)
            os.close(self.answers)
            self.pid = 0
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def _start(self, size: int) -> None:
        self.close()
        self.mm = mm = mmap.mmap(-1, size)
        go_r, self.go = os.pipe()
        self.answers, answer_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.go)
            os.close(self.answers)
            _forked_reader(mm, answer_w, go_r)
        os.close(go_r)
        os.close(answer_w)
        pin_worker(self.pid)
        self.size = size

    def __call__(self, payload: Payload) -> Sample:
        if self.pid == 0 or self.size != payload.size:
            self._start(payload.size)
        assert self.mm is not None
        with memoryview(self.mm) as buf:
            payload.fill(buf)
        start = time.perf_counter()
        os.write(self.go, b"x")
        with open(self.answers, "rb", closefd=False, buffering=0) as stream:
            got = _read_reply(stream)
        elapsed = time.perf_counter() - start
        payload.check(got, "fork-inherited mmap")
        return {"time": elapsed}


LONG_LIVED: Final[Sequence[tuple[str, Callable[[ExitStack], Callable[[Payload], Sample]]]]] = (
    ("anonshm send/receive", AnonshmSocket),
    ("anonshm send/receive, hugepages", AnonshmSocketHuge),
    ("anonshm via mp.Queue", AnonshmQueue),
    ("raw memfd send_fds", RawSocket),
    ("SharedMemory by name", ShmSocket),
    ("pickle through pipe", PicklePipe),
    ("bytes via mp.Queue", PickleQueue),
    ("mmap inherited by fork", ForkMmap),
)

# How much memory a size needs at once: the bytes, one shared copy, the fork region,
# and the pickling routes' copies in flight (sender buffer, receiver, unpickled).
MEMORY_FACTOR: Final = 6
MEMORY_SLACK: Final = 512 * MIB


def trials(
    contenders: Sequence[tuple[str, Callable[[Payload], Sample]]], payload: Payload, count: int = 1
) -> list[tuple[str, Trial]]:
    """One trial per contender: ``count`` handoffs of ``payload``, their mean time."""

    def bind(run: Callable[[Payload], Sample]) -> Trial:
        def trial() -> Sample:
            return {"time": sum(run(payload)["time"] for _ in range(count)) / count}

        return trial

    return [(name, bind(run)) for name, run in contenders]
