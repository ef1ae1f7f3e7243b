"""Channels on asyncio (and uvloop): read_async, view_async, write_async, async reserve."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from anonshm import ChannelReader, ChannelWriter, channel, spawn
from tests.conftest import child_env, open_fds, python_child
from tests.test_aio import loop, run

__all__ = ["loop"]  # the fixture: every test here runs on asyncio and on uvloop


def test_a_stream_flows_between_two_tasks_with_backpressure(loop: str) -> None:
    async def main() -> list[bytes]:
        reader, writer = channel(16, slots=2)
        with reader, writer:

            async def produce() -> None:
                for index in range(200):
                    if index % 2:
                        await writer.write_async(b"%d" % index)
                    else:
                        async with writer.reserve(len(b"%d" % index)) as buf:
                            buf[:] = b"%d" % index
                writer.close()

            producer = asyncio.create_task(produce())
            got = []
            while True:
                try:
                    got.append(await reader.read_async())
                except EOFError:
                    break
                if len(got) % 3 == 0:
                    await asyncio.sleep(0.001)  # a slow reader: the producer must wait
            await producer
            return got

    assert run(loop, main) == [b"%d" % index for index in range(200)]


def test_the_loop_keeps_ticking_while_read_async_waits(loop: str) -> None:
    async def main() -> tuple[int, bytes]:
        reader, writer = channel(64)
        with reader, writer:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)

            ticker = asyncio.create_task(tick())
            waiting = asyncio.create_task(reader.read_async())
            await asyncio.sleep(0.2)
            assert not waiting.done()
            writer.write(b"at last")
            data = await waiting
            ticker.cancel()
            return ticks, data

    ticks, data = run(loop, main)
    assert data == b"at last"
    assert ticks >= 10


def test_a_cancelled_read_async_consumes_nothing_and_leaks_nothing(loop: str) -> None:
    async def main() -> list[bytes]:
        before = open_fds()
        reader, writer = channel(64, slots=4)
        with reader, writer:
            got = []
            for step in range(6):
                task = asyncio.create_task(reader.read_async())
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                writer.write(b"%d" % step)
                async with asyncio.timeout(10):
                    got.append(await reader.read_async())
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.01):
                        await reader.view_async()
        assert open_fds() == before
        return got

    assert run(loop, main) == [b"%d" % step for step in range(6)]


def test_a_cancelled_write_async_sends_nothing(loop: str) -> None:
    async def main() -> list[bytes]:
        reader, writer = channel(64, slots=1)
        with reader, writer:
            await writer.write_async(b"first")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await writer.write_async(b"never")  # the only slot is in flight
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05), writer.reserve(5) as buf:
                    buf[:] = b"never"
            got = [reader.read()]
            await writer.write_async(b"second")
            got.append(await reader.read_async())
            assert not reader.poll()
            return got

    assert run(loop, main) == [b"first", b"second"]


def test_view_async_gives_the_message_in_place(loop: str) -> None:
    async def main() -> bytes:
        reader, writer = channel(64)
        with reader, writer:
            await writer.write_async(b"in place")
            with await reader.view_async() as buf:
                assert buf.readonly
                return bytes(buf)

    assert run(loop, main) == b"in place"


def test_the_ends_of_the_stream_are_the_blocking_calls_errors(loop: str) -> None:
    async def main() -> None:
        reader, writer = channel(64)
        with reader:
            writer.close()
            with pytest.raises(EOFError):
                await reader.read_async()
        reader, writer = channel(64)
        with writer:
            reader.close()
            with pytest.raises(BrokenPipeError):  # noqa: PT012 - the error comes with a write
                for _ in range(3):
                    await writer.write_async(b"x")
            writer.close()
            with pytest.raises(ValueError, match="closed"):
                await writer.write_async(b"x")

    run(loop, main)


def test_an_async_worker_process_answers_through_two_channels(loop: str) -> None:
    code = """
        import asyncio
        from anonshm import ChannelReader, ChannelWriter
        async def main():
            with ChannelReader.inherited("in") as requests, ChannelWriter.inherited("out") as out:
                while True:
                    try:
                        request = await requests.read_async()
                    except EOFError:
                        return
                    await out.write_async(request[::-1])
        asyncio.run(main())
    """

    async def main() -> list[bytes]:
        requests_in, requests = channel(64, slots=4, name="in")
        replies, replies_out = channel(64, slots=4, name="out")
        argv = python_child(code)
        inherit: list[ChannelReader | ChannelWriter] = [requests_in, replies_out]
        with spawn(argv, inherit=inherit, env=child_env(), stdout=subprocess.PIPE) as child:
            requests_in.close()
            replies_out.close()
            got = []
            with requests, replies:
                for word in (b"abc", b"stressed", b""):
                    await requests.write_async(word)
                    async with asyncio.timeout(30):
                        got.append(await replies.read_async())
            assert child.wait(timeout=30) == 0
        return got

    assert run(loop, main) == [b"cba", b"desserts", b""]


def test_import_anonshm_and_a_channel_load_no_asyncio() -> None:
    code = """
        import sys
        from anonshm import channel
        reader, writer = channel(8)
        writer.write(b"x"); reader.read()
        reader.close(); writer.close()
        print("asyncio" in sys.modules)
    """
    done = subprocess.run(
        [*python_child(code)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "False", done.stderr
    assert sys.platform != "win32"
