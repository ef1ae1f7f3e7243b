"""The receiving side of the handoff benchmark: one reader, many ways to get the bytes.

Run as a script, it is a fresh child (``_child.py MODE ...``: read once, answer, exit)
or a long-lived worker (``_child.py worker-MODE ...``: answer until the parent hangs
up).  Imported (by multiprocessing's spawn), it provides the Process targets.  Each
mode imports only what it needs, so a child's start-up cost is its contender's own.

Every mode answers with the checksum of what it read, 8 bytes little-endian, which the
parent compares with the checksum of the data it handed over.
"""

import os
import struct
import sys
import zlib

# Not `from typing import TYPE_CHECKING`: importing typing costs a child ~6 ms, as much
# as the whole handoff of 4 KiB, and would hide each route's own start-up cost.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.queues import Queue
    from typing import Final, TypeAlias

    from typing_extensions import Buffer

REPLY: "Final" = struct.Struct("<Q")
READER_VARIABLE: "Final" = "ANONSHM_BENCH_READER"


def _crc32(buf: "Buffer") -> int:
    return zlib.crc32(buf)


def _numpy_sum(buf: "Buffer") -> int:
    import numpy

    # Summing 8-byte words visits every byte; the sizes are whole pages, so they divide.
    return int(numpy.frombuffer(memoryview(buf), dtype=numpy.uint64).sum()) & 0xFFFF_FFFF_FFFF_FFFF


def reader() -> "Callable[[Buffer], int]":
    """The one pass over the bytes that every contender's child makes (see --reader)."""
    return _numpy_sum if os.environ.get(READER_VARIABLE) == "numpy" else _crc32


def _answer(checksum: int) -> None:
    sys.stdout.buffer.write(REPLY.pack(checksum))
    sys.stdout.buffer.flush()


def _fresh_inherit(name: str) -> None:
    from anonshm import AnonymousMemory

    with AnonymousMemory.inherited(name) as mem, mem.map() as view:
        _answer(reader()(view.buf))


def _fresh_token(token: str) -> None:
    from anonshm import AnonymousMemory

    with AnonymousMemory.from_token(token) as mem, mem.map() as view:
        _answer(reader()(view.buf))


def _fresh_rawfd(fd: str, size: str) -> None:
    import mmap

    with mmap.mmap(int(fd), int(size)) as mm:
        _answer(reader()(mm))


def _attach(name: str) -> object:
    from multiprocessing import resource_tracker, shared_memory

    if sys.version_info >= (3, 13):
        options = {"track": False}
        return shared_memory.SharedMemory(name, **options)
    # An attaching process should not track what it did not create (3.13's track=False):
    # tracking would start a tracker process per child and unlink the segment at exit.
    # Skipping it here favours SharedMemory, which keeps the comparison conservative.
    register = resource_tracker.register
    resource_tracker.register = lambda name, rtype: None
    try:
        return shared_memory.SharedMemory(name)
    finally:
        resource_tracker.register = register


def _read_shm(name: str, reply: "Callable[[int], None]") -> None:
    from multiprocessing.shared_memory import SharedMemory

    shm = _attach(name)
    assert isinstance(shm, SharedMemory)
    try:
        assert shm.buf is not None
        reply(reader()(shm.buf))
    finally:
        shm.close()


def _fresh_shm(name: str) -> None:
    _read_shm(name, _answer)


def _fresh_pickle() -> None:
    import pickle

    _answer(reader()(pickle.load(sys.stdin.buffer)))


# Every route answers as soon as the bytes are read, before unmapping and closing:
# tearing down a large map takes milliseconds that are cleanup, not handoff.
_Handler: "TypeAlias" = "Callable[[socket.socket, Callable[[int], None]], bool]"


def _serve(sock_fd: str, handle: _Handler) -> None:
    import socket

    with socket.socket(fileno=int(sock_fd)) as sock:

        def reply(checksum: int) -> None:
            sock.sendall(REPLY.pack(checksum))

        while handle(sock, reply):
            pass


def _worker_anonshm(sock: "socket.socket", reply: "Callable[[int], None]") -> bool:
    from anonshm import AnonymousMemory

    try:
        mem = AnonymousMemory.receive(sock)
    except EOFError:
        return False
    with mem, mem.map() as view:
        reply(reader()(view.buf))
    return True


def _worker_raw(sock: "socket.socket", reply: "Callable[[int], None]") -> bool:
    import mmap
    import socket

    message, fds, _, _ = socket.recv_fds(sock, REPLY.size, 1)
    if not message:
        return False
    (size,) = REPLY.unpack(message)
    try:
        with mmap.mmap(fds[0], size) as mm:
            reply(reader()(mm))
    finally:
        os.close(fds[0])
    return True


def _worker_shm(sock: "socket.socket", reply: "Callable[[int], None]") -> bool:
    # Names are short ("/psm_" and 8 hex digits): one recv carries one name.
    name = sock.recv(256)
    if not name:
        return False
    _read_shm(name.decode(), reply)
    return True


def _worker_pickle() -> None:
    import pickle

    read = reader()
    while True:
        try:
            data = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        _answer(read(data))
        del data


def mp_fresh(mem: object, conn: "Connection") -> None:
    """A multiprocessing child given the memory as its argument: read it once, answer."""
    from anonshm import AnonymousMemory

    assert isinstance(mem, AnonymousMemory)
    with mem, mem.map() as view:
        conn.send_bytes(REPLY.pack(reader()(view.buf)))
    conn.close()


def mp_worker(inbox: "Queue[object]", outbox: "Queue[int]") -> None:
    """A long-lived multiprocessing worker: memories or bytes in, checksums out, None stops."""
    from anonshm import AnonymousMemory

    read = reader()
    while True:
        item = inbox.get()
        if item is None:
            return
        if isinstance(item, AnonymousMemory):
            with item, item.map() as view:
                outbox.put(read(view.buf))
        else:
            assert isinstance(item, bytes)
            outbox.put(read(item))
        del item


def main(argv: list[str]) -> None:
    mode, *args = argv
    fresh: dict[str, Callable[..., None]] = {
        "inherit": _fresh_inherit,
        "token": _fresh_token,
        "rawfd": _fresh_rawfd,
        "shm": _fresh_shm,
        "pickle": _fresh_pickle,
        "worker-pickle": _worker_pickle,
    }
    workers: dict[str, _Handler] = {
        "worker-anonshm": _worker_anonshm,
        "worker-raw": _worker_raw,
        "worker-shm": _worker_shm,
    }
    if mode in fresh:
        fresh[mode](*args)
    else:
        _serve(args[0], workers[mode])


if __name__ == "__main__":
    main(sys.argv[1:])
