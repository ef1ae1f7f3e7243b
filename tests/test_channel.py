"""Channels: order, content, backpressure, ends of the stream, safety, every handoff route."""

from __future__ import annotations

import gc
import hashlib
import mmap
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import anonshm
from anonshm import (
    AnonShmError,
    ChannelError,
    ChannelReader,
    ChannelWriter,
    InheritError,
    channel,
    spawn,
)
from tests._mp_workers import channel_echo, channel_sum, channel_write_numbers
from tests.conftest import FEATURES, child_env, open_fds, python_child, run_child

READER_CHILD = """
import hashlib, sys
from anonshm import ChannelReader
with ChannelReader.inherited(sys.argv[1]) as reader:
    digest, count = hashlib.sha256(), 0
    for message in reader:
        digest.update(len(message).to_bytes(8, "little") + message)
        count += 1
print(count, digest.hexdigest())
"""


def _messages(seed: int, count: int, largest: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for index in range(count):
        size = rng.choice((0, 1, largest, rng.randrange(largest + 1)))
        yield bytes([index % 251]) * size


def _digest(messages: Iterator[bytes]) -> tuple[int, str]:
    digest, count = hashlib.sha256(), 0
    for message in messages:
        digest.update(len(message).to_bytes(8, "little") + message)
        count += 1
    return count, digest.hexdigest()


@pytest.fixture
def ends() -> Iterator[tuple[ChannelReader, ChannelWriter]]:
    reader, writer = channel(4096, slots=4, name="test-channel")
    with reader, writer:
        yield reader, writer


@pytest.mark.parametrize("zero_copy", [False, True], ids=["write", "reserve"])
def test_thousands_of_random_sizes_arrive_in_order_in_a_child(zero_copy: bool) -> None:
    reader, writer = channel(10_000, slots=8, name="ordered")
    argv = python_child(READER_CHILD, "ordered")
    with spawn(argv, inherit=[reader], stdout=subprocess.PIPE, env=child_env()) as child:
        reader.close()
        with writer:
            for message in _messages(7, 3000, 10_000):
                if zero_copy:
                    with writer.reserve(len(message)) as buf:
                        buf[:] = message
                else:
                    writer.write(message)
        out, _ = child.communicate(timeout=60)
    count, digest = out.split()
    assert (int(count), digest.decode()) == _digest(_messages(7, 3000, 10_000))
    assert child.returncode == 0


def test_a_child_writer_streams_to_the_parent_which_views_in_place() -> None:
    code = """
        import random, sys
        from anonshm import ChannelWriter
        rng = random.Random(11)
        with ChannelWriter.inherited("up") as writer:
            for index in range(2000):
                writer.write(bytes([index % 251]) * rng.randrange(5000))
    """
    reader, writer = channel(5000, slots=16, name="up")
    with reader, spawn(python_child(code), inherit=[writer], env=child_env()) as child:
        writer.close()
        rng = random.Random(11)
        for index in range(2000):
            with reader.view(timeout=30) as buf:
                assert buf.readonly
                assert bytes(buf) == bytes([index % 251]) * rng.randrange(5000)
        with pytest.raises(EOFError):
            reader.read(timeout=30)
        assert child.wait(timeout=30) == 0


def test_each_message_is_exactly_what_was_written(
    ends: tuple[ChannelReader, ChannelWriter],
) -> None:
    reader, writer = ends
    writer.write(b"")
    writer.write(bytearray(b"bytearray"))
    writer.write(memoryview(b"xxview")[2:])
    writer.write(b"\xff" * 4096)
    assert reader.read() == b""
    assert reader.read() == b"bytearray"
    with reader.view() as buf:
        assert (bytes(buf), len(buf), buf.readonly) == (b"view", 4, True)
    assert reader.read() == b"\xff" * 4096


def test_a_full_channel_waits_then_times_out_and_sends_nothing(
    ends: tuple[ChannelReader, ChannelWriter],
) -> None:
    reader, writer = ends
    for index in range(4):
        writer.write(b"%d" % index)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no free slot"):
        writer.write(b"late", timeout=0.2)
    assert time.monotonic() - started >= 0.19
    with pytest.raises(TimeoutError), writer.reserve(4, timeout=0):
        pass
    assert [reader.read() for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    writer.write(b"now", timeout=5)  # the reader gave the slots back when it ran dry
    assert reader.read() == b"now"
    assert not reader.poll()


def test_a_writer_blocked_on_a_full_channel_is_released_by_a_reader_in_a_thread() -> None:
    import threading

    reader, writer = channel(8, slots=2)
    got: list[bytes] = []
    with reader, writer:
        thread = threading.Thread(target=lambda: got.extend(reader.read() for _ in range(50)))
        thread.start()
        for index in range(50):
            writer.write(b"%d" % index, timeout=30)
        thread.join(timeout=30)
    assert got == [b"%d" % index for index in range(50)]


def test_read_times_out_and_consumes_nothing(ends: tuple[ChannelReader, ChannelWriter]) -> None:
    reader, writer = ends
    with pytest.raises(TimeoutError, match="no message arrived"):
        reader.read(timeout=0.05)  # before the first message: waiting on the socket
    writer.write(b"first")
    assert reader.read(timeout=0) == b"first"
    with pytest.raises(TimeoutError):
        reader.view(timeout=0.05)  # after it: waiting on the records' pipe
    assert not reader.poll(0.01)
    writer.write(b"second")
    assert reader.poll(5)
    assert reader.read(timeout=0) == b"second"


def test_the_stream_ends_once_drained_and_stays_ended() -> None:
    reader, writer = channel(16)
    with reader:
        with writer:
            writer.write(b"a")
            writer.write(b"b")
        assert reader.poll()
        assert list(reader) == [b"a", b"b"]
        for _ in range(2):
            with pytest.raises(EOFError, match="closed"):
                reader.read()
        with pytest.raises(EOFError):
            reader.view(timeout=0)
        assert reader.poll()


def test_a_writer_that_never_wrote_ends_the_stream_too() -> None:
    reader, writer = channel(16)
    writer.close()
    with reader, pytest.raises(EOFError, match="before its first message"):
        reader.read(timeout=5)


def test_a_reader_that_is_gone_is_a_broken_pipe(ends: tuple[ChannelReader, ChannelWriter]) -> None:
    reader, writer = ends
    writer.write(b"read by nobody")
    reader.close()
    with pytest.raises(BrokenPipeError, match=r"reader .* is gone"):  # noqa: PT012
        for _ in range(5):
            writer.write(b"more")
    with pytest.raises(BrokenPipeError):  # for good
        writer.write(b"again")


def test_a_reader_gone_before_the_first_write_is_a_broken_pipe() -> None:
    reader, writer = channel(16)
    reader.close()
    with writer, pytest.raises(BrokenPipeError):
        writer.write(b"x")


_KILLED_READER = """
import os, signal, sys, time
from anonshm import ChannelReader
with ChannelReader.inherited("doomed") as reader:
    print(reader.read(timeout=30).decode(), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sigpipe", ["ignored", "default"])
def test_a_killed_reader_gives_the_writer_broken_pipe_never_sigpipe(sigpipe: str) -> None:
    code = """
        import signal, subprocess, sys
        from anonshm import channel, spawn
        if sys.argv[1] == "default":
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as some command-line tools do
        reader, writer = channel(64, slots=2, name="doomed")
        argv = [sys.executable, "-c", sys.argv[2]]
        with spawn(argv, inherit=[reader], stdout=subprocess.PIPE, text=True) as child:
            reader.close()
            writer.write(b"hello")
            assert child.stdout.readline() == "hello\\n"
            child.kill()
            child.wait()
            try:
                for _ in range(10):
                    writer.write(b"x", timeout=30)  # 2 slots: also waits, then learns it
            except BrokenPipeError as exc:
                print("BrokenPipeError", exc)
    """
    result = run_child(code, sigpipe, _KILLED_READER)
    assert result.stdout.startswith("BrokenPipeError")


def test_a_killed_writer_ends_the_stream_at_once() -> None:
    code = """
        import os, signal, time
        from anonshm import ChannelWriter
        with ChannelWriter.inherited("killed") as writer:
            writer.write(b"last words")
            os.kill(os.getpid(), signal.SIGKILL)
    """
    reader, writer = channel(64, name="killed")
    with reader, spawn(python_child(code), inherit=[writer], env=child_env()) as child:
        writer.close()
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert reader.read(timeout=30) == b"last words"
        with pytest.raises(EOFError):
            reader.read(timeout=30)


def test_a_view_held_past_its_block_keeps_its_slot() -> None:
    reader, writer = channel(64, slots=1)
    with reader, writer:
        writer.write(b"kept")
        with reader.view() as buf:
            kept = buf[1:]  # a slice: shares buf's buffer, outlives the block
        assert bytes(kept) == b"ept"
        with pytest.raises(TimeoutError):
            writer.write(b"reuse?", timeout=0.1)  # the slot is not given back
        with pytest.raises(BufferError, match="held by live views"):
            reader.read(timeout=1)  # nothing can come: the only slot is held here
        assert bytes(kept) == b"ept"
        del kept
        assert not reader.poll()  # the reader's next call gives the slot back
        writer.write(b"next", timeout=5)
        assert reader.read(timeout=5) == b"next"


def test_a_numpy_array_of_a_view_keeps_its_slot_until_it_goes() -> None:
    np = pytest.importorskip("numpy")
    reader, writer = channel(64, slots=1)
    with reader, writer:
        writer.write(bytes(range(8)))
        with reader.view() as buf:
            array = np.frombuffer(buf, dtype=np.uint8)
        assert not array.flags.writeable
        with pytest.raises(TimeoutError):
            writer.write(b"x" * 8, timeout=0.1)
        assert array.tolist() == list(range(8))
        del array
        assert not reader.poll()
        writer.write(b"y" * 8, timeout=5)
        assert reader.read(timeout=5) == b"y" * 8


def test_a_view_of_a_closed_reader_stays_readable() -> None:
    reader, writer = channel(64)
    with writer:
        writer.write(b"survives")
        buf = reader.view()
        reader.close()
        assert bytes(buf) == b"survives"  # still mapped: nothing unmapped under a view
        del buf


def test_reserve_sends_at_the_end_of_its_block_and_nothing_if_it_raises(
    ends: tuple[ChannelReader, ChannelWriter],
) -> None:
    reader, writer = ends
    with pytest.raises(RuntimeError), writer.reserve(5) as buf:  # noqa: PT012
        buf[:] = b"never"
        raise RuntimeError
    assert not reader.poll()
    with writer.reserve(0):
        pass
    with writer.reserve(3) as buf:
        assert (len(buf), buf.readonly) == (3, False)
        buf[:] = b"yes"
        assert reader.read() == b""
        assert not reader.poll()  # not sent yet
    assert reader.read() == b"yes"
    assert not reader.poll()
    for _ in range(20):  # the raised block gave its slot back: all 4 still turn
        writer.write(b"z", timeout=5)
        assert reader.read() == b"z"


def test_a_reserved_view_that_outlives_its_block_is_refused_and_sends_nothing(
    ends: tuple[ChannelReader, ChannelWriter],
) -> None:
    reader, writer = ends
    with pytest.raises(BufferError, match="outlives the reserve"), writer.reserve(4) as buf:  # noqa: PT012
        buf[:] = b"leak"
        kept = buf[:2]
    assert not reader.poll()
    assert bytes(kept) == b"le"
    del kept
    for _ in range(8):
        writer.write(b"ok", timeout=5)
        assert reader.read() == b"ok"


def test_a_reserve_block_cannot_be_entered_twice(ends: tuple[ChannelReader, ChannelWriter]) -> None:
    reader, writer = ends
    block = writer.reserve(1)
    with block as buf:
        buf[0] = 1
        with pytest.raises(ValueError, match="already entered"), block:
            pass
    assert reader.read() == b"\x01"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: channel(0), ValueError, "slot_size must be at least 1"),
        (lambda: channel(1.5), TypeError, "slot_size must be an int"),  # type: ignore[arg-type]
        (lambda: channel(True), TypeError, "slot_size must be an int"),
        (lambda: channel(8, slots=0), ValueError, "slots must be from 1"),
        (lambda: channel(8, slots=1 << 20), ValueError, "slots must be from 1"),
        (lambda: channel(1 << 40, slots=1 << 10), ValueError, "more than a channel holds"),
        (lambda: channel(8, name="a:b"), ValueError, "':'"),
        (lambda: channel(8, name=3), TypeError, "name"),  # type: ignore[arg-type]
        (ChannelReader, TypeError, "made by channel"),
        (ChannelWriter, TypeError, "made by channel"),
    ],
    ids=[
        "slot-size-0",
        "slot-size-float",
        "slot-size-bool",
        "slots-0",
        "slots-too-many",
        "too-big",
        "name-colon",
        "name-int",
        "reader-direct",
        "writer-direct",
    ],
)
def test_bad_arguments_are_refused_clearly(
    call: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_bad_messages_and_timeouts_are_refused_and_change_nothing(
    ends: tuple[ChannelReader, ChannelWriter],
) -> None:
    reader, writer = ends
    with pytest.raises(ValueError, match="4097 bytes does not fit a slot of 4096"):
        writer.write(b"x" * 4097)
    with pytest.raises(TypeError, match="bytes-like"):
        writer.write("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="C-contiguous"):
        writer.write(memoryview(b"abcdef")[::2])
    with pytest.raises(ValueError, match="cannot reserve"):
        writer.reserve(4097)
    with pytest.raises(ValueError, match="cannot reserve"):
        writer.reserve(-1)
    with pytest.raises(TypeError, match="size must be an int"):
        writer.reserve(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        reader.read(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        reader.read(timeout=-1)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        reader.poll(float("nan"))
    for _ in range(4):  # no slot was taken by any of the above
        writer.write(b"fine", timeout=0)
    assert [reader.read() for _ in range(4)] == [b"fine"] * 4


def test_closed_ends_refuse_and_close_again_does_nothing() -> None:
    reader, writer = channel(8)
    reader.close()
    writer.close()
    reader.close()
    writer.close()
    assert reader.closed
    assert writer.closed
    for call in (reader.read, reader.view, reader.poll, reader.fileno, writer.fileno):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")
    with pytest.raises(ValueError, match="cannot enter a closed"):
        with reader:
            pass
    assert "closed" in repr(reader)


def test_geometry_and_repr(ends: tuple[ChannelReader, ChannelWriter]) -> None:
    reader, writer = ends
    assert (reader.name, reader.slot_size, reader.slots) == ("test-channel", 4096, 4)
    assert (writer.name, writer.slot_size, writer.slots) == ("test-channel", 4096, 4)
    assert repr(reader) == "<ChannelReader 'test-channel' slot_size=4096 slots=4 new>"
    writer.write(b"x")
    assert repr(writer).endswith("started>")
    assert reader.fileno() >= 0
    assert writer.fileno() >= 0
    assert anonshm.channel is channel


def test_the_readers_maps_and_descriptors_are_read_only() -> None:
    code = r"""
        import fcntl, json, mmap, os, sys
        from anonshm import ChannelReader
        with ChannelReader.inherited("ro") as reader:
            assert reader.read(timeout=30) == b"data"
            page = mmap.ALLOCATIONGRANULARITY
            size = reader.slots * -(-reader.slot_size // page) * page
            maps = []
            with open("/proc/self/maps") as lines:
                for line in lines:
                    fields = line.split(maxsplit=5)
                    start, end = (int(part, 16) for part in fields[0].split("-"))
                    path = fields[5] if len(fields) > 5 else ""
                    if path.startswith(("/memfd:ro", "/dev/shm/")):
                        maps.append((fields[1], end - start == size))
            modes = {}
            for entry in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{entry}")
                except OSError:
                    continue
                if target.startswith(("/memfd:ro", "/dev/shm/")):
                    modes[target] = fcntl.fcntl(int(entry), fcntl.F_GETFL) & os.O_ACCMODE
            print(json.dumps({"maps": maps, "modes": list(modes.values())}))
    """
    import json

    reader, writer = channel(4096, slots=4, name="ro")
    argv = python_child(code)
    with spawn(argv, inherit=[reader], stdout=subprocess.PIPE, env=child_env()) as child:
        reader.close()
        with writer:
            writer.write(b"data")
            out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    seen = json.loads(out)
    assert seen["maps"] == [["r--s", True]]  # one map of the slots, shared, read-only
    assert all(mode == os.O_RDONLY for mode in seen["modes"])  # no writable descriptor


@pytest.mark.skipif(not FEATURES.freeze, reason="needs seals: asserted below for posix")
def test_a_reader_cannot_map_the_slots_for_writing_even_by_reopening() -> None:
    # A hostile worker of the same user: /proc/self/fd/N reopened O_RDWR gives a
    # writable descriptor, but the seal refuses every new writable map and write().
    code = r"""
        import errno, mmap, os
        from anonshm import ChannelReader
        with ChannelReader.inherited("sealed") as reader:
            reader.read(timeout=30)
            refused = []
            for entry in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{entry}")
                except OSError:
                    continue
                if not target.startswith("/memfd:sealed"):
                    continue
                fd = os.open(f"/proc/self/fd/{entry}", os.O_RDWR)
                try:
                    mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_WRITE | mmap.PROT_READ)
                except PermissionError:
                    pass
                else:
                    raise SystemExit("mapped for writing")
                try:
                    os.pwrite(fd, b"x", 0)
                except PermissionError:
                    refused.append(entry)
                finally:
                    os.close(fd)
            print(len(refused))
    """
    reader, writer = channel(4096, slots=2, name="sealed")
    argv = python_child(code)
    with spawn(argv, inherit=[reader], stdout=subprocess.PIPE, env=child_env()) as child:
        reader.close()
        with writer:
            writer.write(b"data")
            out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    # Python < 3.13 keeps a duplicate of the descriptor in every mmap: at least that one.
    assert int(out) >= (1 if sys.version_info < (3, 13) else 0)


def test_without_seals_the_reader_still_holds_only_read_only_descriptors() -> None:
    if FEATURES.freeze:
        pytest.skip("the linux backend seals: tested above")
    reader, writer = channel(64)
    with reader, writer:
        writer.write(b"x")
        assert reader.read() == b"x"
        assert FEATURES.name == "posix"


def test_handing_on_a_used_end_is_refused() -> None:
    reader, writer = channel(64, name="used")
    with reader, writer:
        writer.write(b"x")
        assert reader.read() == b"x"
        for end in (reader, writer):
            with pytest.raises(ValueError, match="cannot be handed on"):
                spawn(["true"], inherit=[end])
            a, b = socket.socketpair()
            with a, b, pytest.raises(ValueError, match="cannot be handed on"):
                end.send(a)


def test_an_end_is_refused_where_the_other_kind_or_a_memory_is_expected() -> None:
    code = """
        import sys
        from anonshm import ChannelError, ChannelReader, ChannelWriter, InheritError
        for kind, name in ((ChannelWriter, "r"), (ChannelReader, "w"), (ChannelReader, "m")):
            try:
                kind.inherited(name)
            except (ChannelError, InheritError) as exc:
                print(type(exc).__name__, exc)
    """
    reader, writer = channel(64, name="kinds")
    with reader, writer, anonshm.AnonymousMemory(8, name="m") as mem:
        inherit: dict[str, anonshm.AnonymousMemory | ChannelReader | ChannelWriter]
        inherit = {"r": reader, "w": writer, "m": mem}
        with spawn(
            python_child(code),
            inherit=inherit,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        ) as child:
            lines = child.communicate(timeout=60)[0].splitlines()
    assert lines[0].startswith("ChannelError")
    assert "is a channel's reader, not" in lines[0]
    assert lines[1].startswith("ChannelError")
    assert "is a channel's writer, not" in lines[1]
    assert lines[2].startswith("InheritError")
    assert "type 1, not a socket (2)" in lines[2]


def test_inherited_refuses_what_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSPR_INHERIT_FDS", raising=False)
    with pytest.raises(InheritError, match="not set"):
        ChannelReader.inherited("x")
    monkeypatch.setenv("NSPR_INHERIT_FDS", "other:2:0x3")
    with pytest.raises(InheritError, match="names only 'other'"):
        ChannelWriter.inherited("x")
    free = max(open_fds()) + 100
    monkeypatch.setenv("NSPR_INHERIT_FDS", f"x:2:0x{free:x}")
    with pytest.raises(InheritError, match="not open"):
        ChannelReader.inherited("x")
    pipe = os.pipe()
    try:
        monkeypatch.setenv("NSPR_INHERIT_FDS", f"x:2:0x{pipe[0]:x}")
        with pytest.raises(ChannelError, match="not a Unix stream socket"):
            ChannelReader.inherited("x")
        one, two = socket.socketpair()
        with one, two:
            monkeypatch.setenv("NSPR_INHERIT_FDS", f"x:2:0x{one.fileno():x}")
            with pytest.raises(ChannelError, match="not a channel end"):
                ChannelReader.inherited("x")
            two.sendall(b"G" * 40)
            with pytest.raises(ChannelError, match="not a channel end"):
                ChannelReader.inherited("x")
            assert not os.get_inheritable(one.fileno())  # untouched, still ours
    finally:
        os.close(pipe[0])
        os.close(pipe[1])


def test_ends_travel_over_a_unix_socket() -> None:
    left, right = socket.socketpair()
    reader, writer = channel(64, name="sent")
    with left, right:
        reader.send(left)
        writer.send(left)
        reader.close()
        writer.close()
        with ChannelReader.receive(right) as got_reader, ChannelWriter.receive(right) as got_writer:
            assert (got_reader.name, got_writer.slots) == ("sent", reader.slots)
            got_writer.write(b"over the socket")
            assert got_reader.read() == b"over the socket"
        mem = anonshm.AnonymousMemory(8)
        mem.send(left)
        mem.close()
        with pytest.raises(ChannelError, match="not a Unix stream socket"):
            ChannelReader.receive(right)
        other, _ = channel(8)
        other.send(left)
        other.close()
        _.close()
        with pytest.raises(ChannelError, match="is a channel's reader, not"):
            ChannelWriter.receive(right)


@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_ends_travel_as_multiprocessing_arguments(method: str) -> None:
    context: Any = multiprocessing.get_context(method)
    requests, request_writer = channel(64, slots=4, name="requests")
    reply_reader, replies = channel(64, slots=4, name="replies")
    worker = context.Process(target=channel_echo, args=(requests, replies))
    worker.start()
    requests.close()
    replies.close()
    with request_writer, reply_reader:
        for word in (b"ping", b"pong", b""):
            request_writer.write(word, timeout=30)
            assert reply_reader.read(timeout=30) == word.upper()
    worker.join(timeout=30)
    assert worker.exitcode == 0


def test_a_writer_end_goes_to_a_pool_task() -> None:
    reader, writer = channel(64, slots=8, name="pooled")
    with multiprocessing.get_context("spawn").Pool(1) as pool, reader:
        result = pool.apply_async(channel_write_numbers, (writer, 20))
        # Pools pickle in a thread of their own: closing before the task has the end
        # would be "closed before multiprocessing sent it" (test_channel_attacks).
        assert reader.read(timeout=60) == b"0"
        writer.close()
        assert [int(reader.read(timeout=60)) for _ in range(19)] == list(range(1, 20))
        assert result.get(timeout=60) == 20


def test_a_reader_end_goes_to_a_forkserver_process_and_sums() -> None:
    context: Any = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )
    reader, writer = channel(8, slots=16)
    results = context.SimpleQueue()
    worker = context.Process(target=channel_sum, args=(reader, results))
    worker.start()
    reader.close()
    with writer:
        for number in range(1000):
            writer.write(number.to_bytes(8, "little"))
    assert results.get() == sum(range(1000))
    worker.join(timeout=30)


def test_plain_pickle_refuses_an_end(ends: tuple[ChannelReader, ChannelWriter]) -> None:
    import pickle

    for end in ends:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(end)


def test_hundreds_of_channels_leave_no_descriptor_or_mapping(no_leaks: None) -> None:
    for index in range(200):
        reader, writer = channel(4096, slots=2, name="leak-check")
        with reader, writer:
            if index % 2:
                writer.write(b"x")
                with reader.view() as buf:
                    assert bytes(buf) == b"x"
            if index % 3 == 0:
                with writer.reserve(2) as buf:
                    buf[:] = b"ab"
    gc.collect()


def test_an_end_dropped_unclosed_closes_its_descriptors() -> None:
    reader, writer = channel(64)
    writer.write(b"x")
    assert reader.read() == b"x"
    fds = {reader.fileno(), writer.fileno(), reader._pipe, writer._pipe}
    with pytest.warns(ResourceWarning, match="unclosed Channel(Reader|Writer) 'anonshm'"):
        del reader, writer
        gc.collect()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_the_windows_backend_and_the_light_import_are_untouched() -> None:
    code = """
        import sys
        import anonshm
        assert "anonshm._channel" not in sys.modules  # a child that maps memory pays nothing
        anonshm.channel
        print(sorted(m for m in sys.modules if m.startswith("anonshm._")))
    """
    loaded = run_child(code).stdout
    assert "anonshm._reader" in loaded
    assert "anonshm._writer" in loaded
    assert issubclass(ChannelError, AnonShmError)


def test_memory_seen_through_mmap_granularity() -> None:
    reader, writer = channel(1, slots=3)
    with reader, writer:
        for index in range(9):
            writer.write(bytes([index]))
            assert reader.read() == bytes([index])
        assert mmap.ALLOCATIONGRANULARITY >= 4096
