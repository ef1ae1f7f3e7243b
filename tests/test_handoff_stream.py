"""receive() on a stream socket with a timeout or non-blocking: a message that arrives in
parts is read whole or not at all, so the stream stays in step for the next receive."""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, TokenError
from tests.conftest import ALLOW_RESIZABLE

if TYPE_CHECKING:
    from collections.abc import Iterator

    Pair = tuple[socket.socket, socket.socket]

NAME = "split-in-two"

# Where the peer splits its message: inside the magic, inside the header's name length,
# just after the header, inside the name.  The first part carries the descriptor.
SPLITS = [
    pytest.param(1, id="magic"),
    pytest.param(5, id="header"),
    pytest.param(18, id="name-length"),
    pytest.param(19, id="after-header"),
    pytest.param(19 + 4, id="name"),
]

# A receive that must give up: long enough that the peer (this process) is not racing
# it, short enough to keep the suite quick.  Nothing asserts how long anything took.
GIVE_UP = 0.2
QUEUED_TIMEOUT = 2.0


@pytest.fixture
def pair(no_leaks: None) -> Iterator[Pair]:
    """A connected stream (sender, receiver) pair; ``no_leaks`` checks after both close."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        yield left, right


def _wire(mem: AnonymousMemory) -> bytes:
    """What send() puts on the wire for ``mem``, read off a real send."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        mem.send(left)
        data, fds, _, _ = socket.recv_fds(right, 4096, 4)
    for fd in fds:
        os.close(fd)
    return data


def _inode(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _assert_receives(right: socket.socket, mem: AnonymousMemory) -> None:
    with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
        assert (got.name, got.size) == (mem.name, mem.size)
        assert _inode(got.fileno()) == _inode(mem.fileno())


def _then_one_more(left: socket.socket, right: socket.socket, mem: AnonymousMemory) -> None:
    """The stream is in step: a whole message sent now is the next one received."""
    mem.send(left)
    _assert_receives(right, mem)


@pytest.mark.parametrize("split", SPLITS)
def test_non_blocking_half_a_message_is_blocking_io_and_consumes_nothing(
    pair: Pair, split: int
) -> None:
    left, right = pair
    right.setblocking(False)
    with AnonymousMemory(64, name=NAME) as mem:
        data = _wire(mem)
        socket.send_fds(left, [data[:split]], [mem.fileno()])
        for _ in range(3):  # as often as the caller's loop comes back to it
            with pytest.raises(BlockingIOError):
                AnonymousMemory.receive(right)
        left.sendall(data[split:])
        _assert_receives(right, mem)
        _then_one_more(left, right, mem)


@pytest.mark.parametrize("pieces", ["bytes", "with-descriptors"])
@pytest.mark.parametrize("split", SPLITS)
def test_timeout_on_half_a_message_consumes_nothing(pair: Pair, split: int, pieces: str) -> None:
    left, right = pair
    right.settimeout(GIVE_UP)
    with AnonymousMemory(64, name=NAME) as mem:
        data = _wire(mem)
        socket.send_fds(left, [data[:split]], [mem.fileno()])
        with pytest.raises(TimeoutError):
            AnonymousMemory.receive(right)
        for byte in data[split:]:  # the rest in many pieces, each a segment of its own
            if pieces == "bytes":
                left.send(bytes([byte]))
            else:  # each ends a peek; the kernel drops them with the read (no leak)
                socket.send_fds(left, [bytes([byte])], [mem.fileno()])
        right.settimeout(QUEUED_TIMEOUT)
        _assert_receives(right, mem)
        _then_one_more(left, right, mem)


@pytest.mark.parametrize("split", SPLITS)
def test_a_receive_that_waits_gets_the_rest_when_it_comes(pair: Pair, split: int) -> None:
    left, right = pair
    right.settimeout(60)  # only turns a hang into a failure
    with AnonymousMemory(64, name=NAME) as mem:
        data = _wire(mem)
        socket.send_fds(left, [data[:split]], [mem.fileno()])
        # Most often the rest comes while the receive is waiting for it; either way
        # the receive must end with the memory.
        later = threading.Timer(GIVE_UP, left.sendall, [data[split:]])
        later.start()
        try:
            _assert_receives(right, mem)
        finally:
            later.join()
        _then_one_more(left, right, mem)


@pytest.mark.parametrize("timeout", [0.0, QUEUED_TIMEOUT], ids=["non-blocking", "timeout"])
@pytest.mark.parametrize("split", SPLITS)
def test_half_a_message_then_the_end_is_cut_short_not_a_wait(
    pair: Pair, split: int, timeout: float
) -> None:
    left, right = pair
    right.settimeout(timeout)
    with AnonymousMemory(64, name=NAME) as mem:
        socket.send_fds(left, [_wire(mem)[:split]], [mem.fileno()])
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(TokenError, match="cut short"):
            AnonymousMemory.receive(right)
        with pytest.raises(EOFError):
            AnonymousMemory.receive(right)


@pytest.mark.parametrize("timeout", [0.0, QUEUED_TIMEOUT], ids=["non-blocking", "timeout"])
def test_whole_messages_in_a_row_need_no_waiting(pair: Pair, timeout: float) -> None:
    left, right = pair
    right.settimeout(timeout)
    with AnonymousMemory(64, name=NAME) as mem, AnonymousMemory(32, name="x") as other:
        for _ in range(3):
            mem.send(left)
            other.send(left)
        for _ in range(3):
            _assert_receives(right, mem)
            _assert_receives(right, other)
        right.settimeout(min(timeout, GIVE_UP))
        with pytest.raises(BlockingIOError if timeout == 0 else TimeoutError):
            AnonymousMemory.receive(right)


def test_a_peer_that_trickles_garbage_is_refused_within_the_timeout(pair: Pair) -> None:
    # Each part is garbage as soon as it is seen: no waiting for the rest of it.
    left, right = pair
    right.settimeout(60)
    with AnonymousMemory(64, name=NAME) as mem:
        socket.send_fds(left, [b"anon"], [mem.fileno()])
        left.send(b"XXXXXXXXXXXXXXXXXXXXXXXX")
        with pytest.raises(TokenError, match="not an anonshm handoff message"):
            AnonymousMemory.receive(right)


def test_a_timeout_leaves_the_peek_offset_as_it_was(pair: Pair) -> None:
    left, right = pair
    right.settimeout(GIVE_UP)
    so_peek_off = getattr(socket, "SO_PEEK_OFF", 42)
    with AnonymousMemory(64, name=NAME) as mem:
        data = _wire(mem)
        socket.send_fds(left, [data[:5]], [mem.fileno()])
        left.send(data[5:9])
        with pytest.raises(TimeoutError):
            AnonymousMemory.receive(right)
        assert right.getsockopt(socket.SOL_SOCKET, so_peek_off) == -1
        assert right.recv(4096, socket.MSG_PEEK) == data[:5]  # still from the start
        left.sendall(data[9:])
        _assert_receives(right, mem)
