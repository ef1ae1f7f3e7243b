"""send_async() and receive_async() on asyncio (and uvloop): parity with send/receive,
the loop never blocked, cancellation at any point leaving nothing open and the stream whole."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection, TokenError, _aio, _handoff
from tests.conftest import ALLOW_RESIZABLE, open_fds, run_child

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator
    from typing import Any

new_uvloop: Callable[[], asyncio.AbstractEventLoop] | None
try:
    import uvloop

    new_uvloop = uvloop.new_event_loop
except ImportError:  # not on every platform (nor on Windows at all)
    new_uvloop = None

LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(new_uvloop is None, reason="no uvloop")),
]
KINDS = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", autouse=True)
def _uvloop_started() -> None:
    # libuv opens a pipe of its own on first use, for the process's life: open it
    # before any test counts descriptors.
    if new_uvloop is not None:
        run("uvloop", asyncio.sleep, 0)


def run(loop: str, main: Callable[..., Coroutine[Any, Any, Any]], *args: object) -> Any:
    factory = None if loop == "asyncio" else new_uvloop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main(*args))


@pytest.fixture(params=list(KINDS))
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair(socket.AF_UNIX, KINDS[request.param])
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        yield left, right


async def receive(sock: socket.socket) -> AnonymousMemory:
    return await AnonymousMemory.receive_async(sock, allow_resizable=ALLOW_RESIZABLE)


def send_raw(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """What a peer sends, by hand: ``data`` with ``fds`` riding along (none: plain bytes)."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
    sock.sendmsg([data], rights if fds else [])


def test_a_memory_goes_round_trip(loop: str, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair

    async def main() -> None:
        before = open_fds()
        with AnonymousMemory(4096, name="trip") as mem:
            mem.write(b"payload")
            await mem.send_async(left)
            with await receive(right) as got:
                assert (got.name, got.size, got.protection) == ("trip", 4096, Protection.READ_WRITE)
                assert got.read(7) == b"payload"
                got.write(b"answer")
            assert mem.read(6) == b"answer"
        assert open_fds() == before

    run(loop, main)


def test_async_and_blocking_calls_speak_the_same_message(
    loop: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = pair

    async def main() -> None:
        with AnonymousMemory(64, name="one", protection=Protection.READ_ONLY) as mem:
            await mem.send_async(left)
            mem.send(left)
        right.settimeout(5)  # receive() may have one; receive_async may not
        with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
            assert (got.name, got.protection) == ("one", Protection.READ_ONLY)
        right.setblocking(False)
        with await receive(right) as got:
            assert (got.name, got.protection) == ("one", Protection.READ_ONLY)

    run(loop, main)


def test_many_receivers_waiting_on_one_socket_each_get_one_memory(
    loop: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = pair
    count = 20

    async def main() -> None:
        before = open_fds()
        receivers = [asyncio.create_task(receive(right)) for _ in range(count)]
        await asyncio.sleep(0)  # all of them waiting now
        for index in range(count):
            with AnonymousMemory(8, name=f"m{index}") as mem:
                await mem.send_async(left)
        async with asyncio.timeout(10):  # a guard: a lost wake-up would hang the run
            got = await asyncio.gather(*receivers)
        assert sorted(mem.name for mem in got) == sorted(f"m{index}" for index in range(count))
        for mem in got:
            mem.close()
        assert not _aio._waiting  # nothing left registered with the loop
        assert open_fds() == before

    run(loop, main)


def test_the_loop_keeps_running_while_receive_async_waits(
    loop: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = pair
    ticked = threading.Event()

    def sender() -> None:
        # Sends once the loop has ticked; or after a while all the same, so that a
        # receive_async that blocks the loop fails the assertion below, not the run.
        ticked.wait(10)
        with AnonymousMemory(8, name="late") as mem:
            mem.send(left)

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 100:
                    ticked.set()
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        thread = threading.Thread(target=sender)
        thread.start()
        try:
            with await receive(right) as got:
                assert got.name == "late"
            assert ticked.is_set()  # set by the ticker, before anything was sent
            assert ticks >= 100
        finally:
            ticking.cancel()
            thread.join()

    run(loop, main)


async def _cancel_while_waiting(sock: socket.socket) -> None:
    """Start a receive, let the loop run it into its wait, cancel it: it must be waiting."""
    task = asyncio.create_task(receive(sock))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_cancelled_receive_leaves_nothing_open_and_the_message_whole(
    loop: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    # The peer sends its message a byte at a time (the descriptor with the first);
    # a receive cancelled after each byte leaves no descriptor (nor epoll) open and
    # consumes nothing; the next receive gets the whole message.
    left, right = pair
    stream = left.type == socket.SOCK_STREAM

    async def main() -> None:
        everything = open_fds()
        with AnonymousMemory(16, name="slow") as mem:
            before = open_fds()
            data = _handoff.message(mem.name, mem.size, 1)
            await _cancel_while_waiting(right)  # nothing sent yet
            assert open_fds() == before
            if stream:
                send_raw(left, data[:1], [mem.fileno()])
                for index in range(1, len(data)):
                    await _cancel_while_waiting(right)
                    assert open_fds() == before
                    left.send(data[index : index + 1])
            else:
                send_raw(left, data, [mem.fileno()])
        with await receive(right) as got:
            assert (got.name, got.size) == ("slow", 16)
        assert open_fds() == everything
        assert not _aio._waiting

    run(loop, main)


def test_a_waiting_receive_gets_the_rest_of_a_message_as_it_comes(loop: str) -> None:
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)

        async def main() -> None:
            with AnonymousMemory(16, name="drip") as mem:
                data = _handoff.message(mem.name, mem.size, 1)
                task = asyncio.create_task(receive(right))
                send_raw(left, data[:3], [mem.fileno()])
                for index in range(3, len(data)):
                    await asyncio.sleep(0)
                    assert not task.done()
                    left.send(data[index : index + 1])
            with await task as got:
                assert got.name == "drip"

        run(loop, main)


def _hostile(name: str, sock: socket.socket, fd: int) -> None:
    """Make the peer ``sock`` misbehave as ``name`` says (``fd``: a memory's descriptor)."""
    good = _handoff.message("hostile", 16, 1)
    if name == "garbage":
        send_raw(sock, b"x" * 40, [])
    elif name == "garbage with a descriptor":
        send_raw(sock, b"not anonshm at all", [fd])
    elif name == "two descriptors":
        send_raw(sock, good, [fd, fd])
    elif name == "no descriptor":
        send_raw(sock, good, [])
    elif name == "bytes too many":
        send_raw(sock, good + b"!!", [fd])
    elif name == "cut short, then the end":
        send_raw(sock, good[:12], [fd])
        sock.shutdown(socket.SHUT_WR)
    elif name == "the end":
        sock.shutdown(socket.SHUT_WR)
    elif name == "wrong size":
        send_raw(sock, _handoff.message("hostile", 4096, 1), [fd])
    else:
        raise AssertionError(name)


HOSTILE = [
    "garbage",
    "garbage with a descriptor",
    "two descriptors",
    "no descriptor",
    "bytes too many",
    "cut short, then the end",
    "the end",
    "wrong size",
]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_peer_gets_the_errors_receive_gives(loop: str, kind: str, hostile: str) -> None:
    errors: list[tuple[type[BaseException] | None, str]] = []
    before = open_fds()
    with AnonymousMemory(16) as mem:
        for how in ("blocking", "async"):
            left, right = socket.socketpair(socket.AF_UNIX, KINDS[kind])
            with left, right:
                _hostile(hostile, left, mem.fileno())
                try:
                    if how == "blocking":
                        right.settimeout(1)
                        AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE).close()
                    else:
                        right.setblocking(False)
                        run(loop, receive, right)
                except (TokenError, EOFError) as exc:
                    errors.append((type(exc), str(exc)))
                else:
                    errors.append((None, "received"))
    assert errors[0][0] is not None, errors
    assert errors[0] == errors[1]
    assert open_fds() == before


def test_sending_a_closed_memory_is_a_value_error(
    loop: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    left, _ = pair
    mem = AnonymousMemory(8)
    mem.close()

    async def main() -> None:
        with pytest.raises(ValueError, match="closed AnonymousMemory"):
            await mem.send_async(left)

    run(loop, main)


def _fill(sock: socket.socket) -> int:
    """Fill ``sock``'s buffer until the kernel takes no more; how many bytes it took."""
    sock.setblocking(False)
    total = 0
    while True:
        try:
            total += sock.send(b"f" * 4096)
        except BlockingIOError:
            return total


def test_a_send_to_a_full_socket_waits_on_the_loop_until_there_is_room(loop: str) -> None:
    left, right = socket.socketpair()
    with left, right:
        filled = _fill(left)

        async def main() -> None:
            with AnonymousMemory(8, name="queued") as mem:
                task = asyncio.create_task(mem.send_async(left))
                for _ in range(20):
                    await asyncio.sleep(0)  # the loop runs; the send waits
                assert not task.done()
                drained = 0
                while drained < filled:
                    drained += len(right.recv(filled - drained))
                await task
            right.setblocking(False)
            with await receive(right) as got:
                assert got.name == "queued"

        run(loop, main)


def test_a_close_while_a_send_waits_makes_it_a_value_error(loop: str) -> None:
    # The descriptor is borrowed only for each attempt: the close is not held up, and
    # the attempt after it sends nothing.
    left, right = socket.socketpair()
    with left, right:
        filled = _fill(left)

        async def main() -> None:
            mem = AnonymousMemory(8)
            task = asyncio.create_task(mem.send_async(left))
            await asyncio.sleep(0)
            mem.close()
            drained = 0
            while drained < filled:
                drained += len(right.recv(filled - drained))
            with pytest.raises(ValueError, match="closed AnonymousMemory"):
                await task
            right.setblocking(False)
            with pytest.raises(BlockingIOError):
                right.recv(1)  # nothing was sent

        run(loop, main)


def test_a_cancelled_send_sends_nothing_and_leaves_nothing_registered(loop: str) -> None:
    left, right = socket.socketpair()
    with left, right:
        filled = _fill(left)

        async def main() -> None:
            with AnonymousMemory(8) as mem:
                task = asyncio.create_task(mem.send_async(left))
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert not _aio._waiting
            assert len(right.recv(filled + 100)) == filled

        run(loop, main)


def test_bad_sockets_are_refused_as_send_and_receive_refuse_them(loop: str) -> None:
    async def main() -> None:
        with AnonymousMemory(8) as mem:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                with pytest.raises(OSError) as caught:
                    await mem.send_async(tcp)
                assert caught.value.errno == errno.EAFNOSUPPORT
                with pytest.raises(OSError) as caught:
                    await AnonymousMemory.receive_async(tcp)
                assert caught.value.errno == errno.EAFNOSUPPORT
            with pytest.raises(TypeError, match=r"sock must be a socket\.socket, not int"):
                await mem.send_async(3)  # type: ignore[arg-type]
            left, right = socket.socketpair()
            with left, right:
                right.settimeout(1.5)
                with pytest.raises(ValueError, match=r"sock has a timeout \(1.5 s\)"):
                    await AnonymousMemory.receive_async(right)
                right.setblocking(True)
                with pytest.raises(ValueError, match="sock is blocking"):
                    await AnonymousMemory.receive_async(right)
                left.settimeout(1.5)
                with pytest.raises(ValueError, match="setblocking"):
                    await mem.send_async(left)
                with pytest.raises(TypeError, match="allow_resizable must be True or False"):
                    await AnonymousMemory.receive_async(right, allow_resizable=1)  # type: ignore[arg-type]

    run(loop, main)


def test_readable_wakes_every_waiter_and_a_cancelled_one_unregisters(loop: str) -> None:
    import os

    async def main() -> None:
        r, w = os.pipe()
        try:
            waiters = [asyncio.create_task(_aio.readable(r)) for _ in range(5)]
            await asyncio.sleep(0)
            waiters[0].cancel()
            await asyncio.sleep(0)
            os.write(w, b"x")
            async with asyncio.timeout(10):  # a guard: a lost wake-up would hang the run
                await asyncio.gather(*waiters[1:])
            assert not _aio._waiting
            lonely = asyncio.create_task(_aio.writable(w))
            await lonely
            os.read(r, 1)
            lonely = asyncio.create_task(_aio.readable(r))
            await asyncio.sleep(0)
            lonely.cancel()
            with pytest.raises(asyncio.CancelledError):
                await lonely
            assert not _aio._waiting  # nothing watches r once it is closed
        finally:
            os.close(r)
            os.close(w)

    run(loop, main)


def test_import_anonshm_loads_no_asyncio() -> None:
    code = """
        import json, socket, sys
        import anonshm
        left, right = socket.socketpair()
        with anonshm.AnonymousMemory(8) as mem:
            mem.write(b"x")
            mem.send(left)
        anonshm.AnonymousMemory.receive(right, allow_resizable=True).close()
        print(json.dumps(sorted(m for m in sys.modules if "asyncio" in m or "_aio" in m)))
    """
    assert json.loads(run_child(code).stdout) == []
