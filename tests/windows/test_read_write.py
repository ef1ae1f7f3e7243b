"""write() and read() on Windows (tested under Wine): a mapped copy of just the pages;
and the async handoff's clear refusal (Windows sockets carry no handles)."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import TYPE_CHECKING

assert sys.platform == "win32" or not TYPE_CHECKING  # for type checkers: Windows only

import pytest  # noqa: E402

from anonshm import AnonShmError, AnonymousMemory, Protection  # noqa: E402

GRANULARITY = 65536  # where Windows' views may start


def test_write_and_read_cross_a_view_boundary_and_agree_with_a_map() -> None:
    size = 3 * GRANULARITY + 5
    with AnonymousMemory(size, name="io") as mem:
        data = bytes(range(256)) * 4
        assert mem.write(data, GRANULARITY - 100) == len(data)
        assert mem.read(len(data), GRANULARITY - 100) == data
        assert mem.write(b"end", size - 3) == 3
        with mem.map() as view:
            assert bytes(view[GRANULARITY - 100 : GRANULARITY - 100 + len(data)]) == data
            assert bytes(view[size - 3 :]) == b"end"
            view[:4] = b"mapd"
        assert mem.read(4) == b"mapd"
        assert mem.write(memoryview(b"abcdef")[::2], 10) == 3  # not contiguous: copied
        assert mem.read(3, 10) == b"ace"


def test_the_window_is_checked_and_the_memory_never_grows() -> None:
    with AnonymousMemory(100) as mem:
        with pytest.raises(ValueError, match=r"cannot write 5 bytes at offset 96: .* 100 bytes"):
            mem.write(b"12345", 96)
        with pytest.raises(ValueError, match=r"cannot read 5 bytes at offset 96"):
            mem.read(5, 96)
        assert mem.write(b"", 100) == 0  # no view of the whole section (length 0 maps all)
        assert mem.read(0, 100) == b""


@pytest.mark.parametrize("protection", [Protection.READ_ONLY, Protection.WRITE_COPY])
def test_a_memory_that_may_not_be_written_refuses(protection: Protection) -> None:
    with AnonymousMemory(8, name="ro", protection=protection) as mem:
        with pytest.raises(PermissionError, match=f"the memory is {protection.name}"):
            mem.write(b"x")
        assert mem.read(8) == bytes(8)


def test_a_closed_memory_refuses_both() -> None:
    mem = AnonymousMemory(8)
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        mem.write(b"x")
    with pytest.raises(ValueError, match="closed"):
        mem.read(1)


def test_the_async_handoff_is_the_same_clear_error() -> None:
    async def main() -> None:
        left, right = socket.socketpair()
        with left, right, AnonymousMemory(16) as mem:
            with pytest.raises(AnonShmError, match="cannot send memory over a socket"):
                await mem.send_async(left)
            with pytest.raises(AnonShmError, match="cannot send memory over a socket"):
                await AnonymousMemory.receive_async(right)

    asyncio.run(main())
